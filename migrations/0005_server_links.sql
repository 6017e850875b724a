-- Servers this one links to (SPEC §13, `chatd link add`): where each is, its own key if it has one, and its
-- outbox cursor, the last local seq it acknowledged.
CREATE TABLE server_links (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    key TEXT,
    added_at INTEGER NOT NULL,
    cursor INTEGER NOT NULL
) WITHOUT ROWID;
