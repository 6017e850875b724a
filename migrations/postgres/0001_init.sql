-- The PostgreSQL schema: the same tables as SQLite's (migrations/0001..0004), in one step, plus what a cluster
-- of chatd processes sharing the database needs (the writer lease, node reports, the cluster's secret).
-- Ids, seqs and times are BIGINT (snowflakes and unix ms fit in i64); postcard records are BYTEA. The column
-- SQLite calls `user` is `user_id` here: USER is a reserved word in PostgreSQL.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

-- The append-only log; see the SQLite schema for the audience columns.
CREATE TABLE events (
    seq         BIGINT PRIMARY KEY,
    ts          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    aud         SMALLINT NOT NULL,
    aud_at      BIGINT NOT NULL,
    aud_channel BIGINT,
    aud_space   BIGINT,
    aud_user    BIGINT,
    payload     BYTEA NOT NULL
);
CREATE INDEX events_ts ON events (ts);

CREATE TABLE snapshots (
    seq   BIGINT PRIMARY KEY,
    state BYTEA NOT NULL
);

CREATE TABLE cursors (
    client BIGINT PRIMARY KEY,
    seq    BIGINT NOT NULL
);

CREATE TABLE nonces (
    user_id BIGINT NOT NULL,
    nonce   TEXT NOT NULL,
    at      BIGINT NOT NULL,
    reply   BYTEA NOT NULL,
    PRIMARY KEY (user_id, nonce)
);
CREATE INDEX nonces_at ON nonces (at);

CREATE TABLE spent_stamps (
    key     BYTEA PRIMARY KEY,
    expires BIGINT NOT NULL
);
CREATE INDEX spent_stamps_expires ON spent_stamps (expires);

CREATE TABLE users (
    id            BIGINT PRIMARY KEY,
    nick          TEXT NOT NULL,
    password_hash TEXT,
    display_name  TEXT,
    bio           TEXT,
    avatar_url    TEXT,
    away          TEXT,
    bot           BOOLEAN NOT NULL,
    system        BOOLEAN NOT NULL,
    released      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL
);

-- Clients keep only the SHA-256 of their token, never the token.
CREATE TABLE clients (
    id         BIGINT PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    name       TEXT NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE spaces (
    id          BIGINT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT,
    icon_url    TEXT,
    owner       BIGINT NOT NULL,
    public      BOOLEAN NOT NULL,
    network     BOOLEAN NOT NULL,
    created_seq BIGINT NOT NULL,
    deleted_seq BIGINT
);

-- Memberships as intervals of seqs: from `from_seq` (inclusive) to `to_seq` (exclusive; NULL while open).
CREATE TABLE space_members (
    space    BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq   BIGINT,
    roles    BYTEA,
    nick     TEXT,
    PRIMARY KEY (space, user_id, from_seq)
);
CREATE INDEX space_members_user ON space_members (user_id, space);

CREATE TABLE space_bans (
    space   BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    reason  TEXT,
    PRIMARY KEY (space, user_id)
);

CREATE TABLE roles (
    id          BIGINT PRIMARY KEY,
    space       BIGINT NOT NULL,
    name        TEXT NOT NULL,
    permissions BIGINT NOT NULL,
    color       BIGINT NOT NULL,
    hoist       BOOLEAN NOT NULL,
    mentionable BOOLEAN NOT NULL,
    position    BIGINT NOT NULL
);

CREATE TABLE channels (
    id            BIGINT PRIMARY KEY,
    space         BIGINT,
    kind          TEXT NOT NULL,
    parent        BIGINT,
    name          TEXT NOT NULL,
    topic         TEXT,
    topic_by      BIGINT,
    topic_at      BIGINT,
    position      BIGINT NOT NULL,
    slowmode_secs BIGINT NOT NULL,
    owner         BIGINT,
    starter       BIGINT,
    last_message  BIGINT,
    created_seq   BIGINT NOT NULL,
    deleted_seq   BIGINT
);
CREATE INDEX channels_space ON channels (space);
CREATE INDEX channels_parent ON channels (parent);

CREATE TABLE members (
    channel  BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq   BIGINT,
    op       BOOLEAN NOT NULL DEFAULT FALSE,
    voice    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (channel, user_id, from_seq)
);
CREATE INDEX members_user ON members (user_id, channel);

-- Overwrite targets: kind 0 = role, 1 = member.
CREATE TABLE overwrites (
    channel     BIGINT NOT NULL,
    target_kind SMALLINT NOT NULL,
    target      BIGINT NOT NULL,
    allow       BIGINT NOT NULL,
    deny        BIGINT NOT NULL,
    PRIMARY KEY (channel, target_kind, target)
);

-- Messages as history shows them. `words` is the full-text index's view of the body, made by the store from
-- the same tokens the SQLite index and the in-memory store use (lowercased, diacritics removed, split at
-- everything not alphanumeric; the highlight markers \x02 and \x03 are separators too), with positions for
-- phrases; NULL for the kinds search does not cover (system notices).
CREATE TABLE messages (
    id               BIGINT PRIMARY KEY,
    seq              BIGINT NOT NULL,
    ts               BIGINT NOT NULL,
    channel          BIGINT NOT NULL,
    space            BIGINT,
    author           BIGINT NOT NULL,
    kind             TEXT NOT NULL,
    body             TEXT NOT NULL,
    meta             TEXT,
    reply_to         BIGINT,
    thread           BIGINT,
    mention_everyone BOOLEAN NOT NULL,
    embeds           TEXT,
    pinned           BOOLEAN NOT NULL DEFAULT FALSE,
    edited_at        BIGINT,
    nonce            TEXT,
    mentions         BYTEA NOT NULL,
    attachments      BYTEA NOT NULL,
    words            TSVECTOR
);
CREATE INDEX messages_channel ON messages (channel, id);
CREATE INDEX messages_pinned ON messages (channel, id) WHERE pinned;
CREATE INDEX messages_words ON messages USING GIN (words) WHERE words IS NOT NULL;

CREATE TABLE reactions (
    message BIGINT NOT NULL,
    emoji   TEXT NOT NULL,
    user_id BIGINT NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (message, emoji, user_id)
);

CREATE TABLE read_states (
    user_id       BIGINT NOT NULL,
    channel       BIGINT NOT NULL,
    last_read     BIGINT NOT NULL,
    mention_count BIGINT NOT NULL,
    PRIMARY KEY (user_id, channel)
);

CREATE TABLE invites (
    code       TEXT PRIMARY KEY,
    id         BIGINT NOT NULL,
    space      BIGINT,
    channel    BIGINT,
    creator    BIGINT NOT NULL,
    max_uses   BIGINT NOT NULL,
    uses       BIGINT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);

-- The cluster. The writer lease is one row: `term` grows with every takeover and fences appends; `expires`
-- is the database's clock, never a node's.
CREATE TABLE lease (
    one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    term    BIGINT NOT NULL,
    node    INTEGER NOT NULL,
    addr    TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);

-- Each node's last report of itself.
CREATE TABLE nodes (
    id          INTEGER PRIMARY KEY,
    addr        TEXT NOT NULL,
    role        TEXT NOT NULL,
    applied     BIGINT NOT NULL,
    reported_at TIMESTAMPTZ NOT NULL
);

-- Secrets and marks shared by every node, made once: `cluster_secret` (32 random bytes, with which nodes
-- authenticate each other's links; drawn by the store from the OS's randomness when it creates the
-- database), `data_dir_mark` (by the first node that marks DATA_DIR).
CREATE TABLE cluster_meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
