-- The full-text index, rebuilt for group commits and prefix search.
--
-- New messages reach the index from the append code, one plain insert each, instead of through a trigger. A
-- trigger makes every message insert a multi-row write that opens a statement savepoint, and FTS5 flushes
-- its pending terms to a new on-disk segment at every savepoint: one segment per message, merged again and
-- again, which cost more than everything else in an append. A plain insert leaves the terms in FTS5's memory
-- until the commit, so a group commit writes one segment per batch. Deletes and edits are rare and keep
-- their triggers.
--
-- With flushes once per batch, a prefix index for two- and three-character prefixes is cheap to keep, and
-- it is what short prefix queries need: without it FTS5 merges the lists of every term under the prefix
-- before it can return the newest hit (about 50 ms for a two-letter prefix over 1M messages; under 1 ms
-- with it). Longer prefixes cover few terms and stay fast without an index of their own.
DROP TRIGGER messages_fts_insert;
DROP TABLE messages_fts;
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body,
    content = 'messages_fts_src',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '2 3'
);
-- Only what users wrote is indexed, as before: not the view's system notices.
INSERT INTO messages_fts (rowid, body)
    SELECT id, replace(replace(body, char(2), ' '), char(3), ' ') FROM messages
    WHERE kind IN ('message', 'action', 'notice');
INSERT INTO messages_fts (messages_fts, rank) VALUES ('automerge', 8);
