-- The first schema: the event log, snapshots, cursors, nonces, and the tables projected from the log.
-- Ids are snowflakes stored as INTEGER (they stay below 2^63 for centuries); booleans are 0/1.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- The append-only log. `aud` is the audience's kind (0 nobody, 1 user, 2 users, 3 channel, 4 channel and one
-- user, 5 space, 6 space and one user); `aud_channel` is the channel whose members receive it (a thread's
-- parent already resolved), so that a stream query needs no payload decoding except for `users` audiences.
-- `aud_at` is the seq at which the audience is resolved: the end of the command that made the event.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    aud         INTEGER NOT NULL,
    aud_at      INTEGER NOT NULL,
    aud_channel INTEGER,
    aud_space   INTEGER,
    aud_user    INTEGER,
    payload     BLOB NOT NULL
);
CREATE INDEX events_ts ON events (ts);

CREATE TABLE snapshots (
    seq   INTEGER PRIMARY KEY,
    state BLOB NOT NULL
);

CREATE TABLE cursors (
    client INTEGER PRIMARY KEY,
    seq    INTEGER NOT NULL
);

CREATE TABLE nonces (
    user  INTEGER NOT NULL,
    nonce TEXT NOT NULL,
    at    INTEGER NOT NULL,
    reply BLOB NOT NULL,
    PRIMARY KEY (user, nonce)
) WITHOUT ROWID;
CREATE INDEX nonces_at ON nonces (at);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    nick          TEXT NOT NULL,
    password_hash TEXT,
    display_name  TEXT,
    bio           TEXT,
    avatar_url    TEXT,
    away          TEXT,
    bot           INTEGER NOT NULL,
    system        INTEGER NOT NULL,
    released      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

-- Clients keep only the SHA-256 of their token, never the token.
CREATE TABLE clients (
    id         INTEGER PRIMARY KEY,
    user       INTEGER NOT NULL,
    name       TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE spaces (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT,
    icon_url    TEXT,
    owner       INTEGER NOT NULL,
    public      INTEGER NOT NULL,
    network     INTEGER NOT NULL,
    created_seq INTEGER NOT NULL,
    deleted_seq INTEGER
);

-- Space membership as intervals of seqs: a member from `from_seq` (inclusive) to `to_seq` (exclusive; NULL
-- while still a member). The stream's visibility rule reads them.
CREATE TABLE space_members (
    space    INTEGER NOT NULL,
    user     INTEGER NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER,
    roles    BLOB,
    nick     TEXT,
    PRIMARY KEY (space, user, from_seq)
) WITHOUT ROWID;
CREATE INDEX space_members_user ON space_members (user, space);

CREATE TABLE space_bans (
    space  INTEGER NOT NULL,
    user   INTEGER NOT NULL,
    reason TEXT,
    PRIMARY KEY (space, user)
) WITHOUT ROWID;

CREATE TABLE roles (
    id          INTEGER PRIMARY KEY,
    space       INTEGER NOT NULL,
    name        TEXT NOT NULL,
    permissions INTEGER NOT NULL,
    color       INTEGER NOT NULL,
    hoist       INTEGER NOT NULL,
    mentionable INTEGER NOT NULL,
    position    INTEGER NOT NULL
);

CREATE TABLE channels (
    id            INTEGER PRIMARY KEY,
    space         INTEGER,
    kind          TEXT NOT NULL,
    parent        INTEGER,
    name          TEXT NOT NULL,
    topic         TEXT,
    topic_by      INTEGER,
    topic_at      INTEGER,
    position      INTEGER NOT NULL,
    slowmode_secs INTEGER NOT NULL,
    owner         INTEGER,
    starter       INTEGER,
    last_message  INTEGER,
    created_seq   INTEGER NOT NULL,
    deleted_seq   INTEGER
);
CREATE INDEX channels_space ON channels (space);
CREATE INDEX channels_parent ON channels (parent);

-- Channel membership as intervals, like space_members; `op` and `voice` are the member modes of the open one.
CREATE TABLE members (
    channel  INTEGER NOT NULL,
    user     INTEGER NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER,
    op       INTEGER NOT NULL DEFAULT 0,
    voice    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, user, from_seq)
) WITHOUT ROWID;
CREATE INDEX members_user ON members (user, channel);

-- Overwrite targets: kind 0 = role, 1 = member.
CREATE TABLE overwrites (
    channel     INTEGER NOT NULL,
    target_kind INTEGER NOT NULL,
    target      INTEGER NOT NULL,
    allow       INTEGER NOT NULL,
    deny        INTEGER NOT NULL,
    PRIMARY KEY (channel, target_kind, target)
) WITHOUT ROWID;

-- Messages as history shows them; a deleted message's row is removed. Mentions and attachments are postcard
-- lists: read with the message, never queried on their own.
CREATE TABLE messages (
    id               INTEGER PRIMARY KEY,
    seq              INTEGER NOT NULL,
    ts               INTEGER NOT NULL,
    channel          INTEGER NOT NULL,
    space            INTEGER,
    author           INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    body             TEXT NOT NULL,
    meta             TEXT,
    reply_to         INTEGER,
    thread           INTEGER,
    mention_everyone INTEGER NOT NULL,
    embeds           TEXT,
    pinned           INTEGER NOT NULL DEFAULT 0,
    edited_at        INTEGER,
    nonce            TEXT,
    mentions         BLOB NOT NULL,
    attachments      BLOB NOT NULL
);
CREATE INDEX messages_channel ON messages (channel, id);

CREATE TABLE reactions (
    message INTEGER NOT NULL,
    emoji   TEXT NOT NULL,
    user    INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (message, emoji, user)
) WITHOUT ROWID;

CREATE TABLE read_states (
    user          INTEGER NOT NULL,
    channel       INTEGER NOT NULL,
    last_read     INTEGER NOT NULL,
    mention_count INTEGER NOT NULL,
    PRIMARY KEY (user, channel)
) WITHOUT ROWID;

CREATE TABLE invites (
    code       TEXT PRIMARY KEY,
    id         INTEGER NOT NULL,
    space      INTEGER,
    channel    INTEGER,
    creator    INTEGER NOT NULL,
    max_uses   INTEGER NOT NULL,
    uses       INTEGER NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Full-text search over what users wrote. The index reads bodies through a view that blanks the two control
-- characters snippets use as highlight markers, so no stored text can fake a highlight. There is no prefix
-- index: it made every insert about twice as slow, and prefix queries run fast enough on the plain terms.
CREATE VIEW messages_fts_src AS
    SELECT id, replace(replace(body, char(2), ' '), char(3), ' ') AS body FROM messages;
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body,
    content = 'messages_fts_src',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
    WHEN new.kind IN ('message', 'action', 'notice')
BEGIN
    INSERT INTO messages_fts (rowid, body)
        VALUES (new.id, replace(replace(new.body, char(2), ' '), char(3), ' '));
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
    WHEN old.kind IN ('message', 'action', 'notice')
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body)
        VALUES ('delete', old.id, replace(replace(old.body, char(2), ' '), char(3), ' '));
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages
    WHEN old.kind IN ('message', 'action', 'notice')
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body)
        VALUES ('delete', old.id, replace(replace(old.body, char(2), ' '), char(3), ' '));
    INSERT INTO messages_fts (rowid, body)
        VALUES (new.id, replace(replace(new.body, char(2), ' '), char(3), ' '));
END;
