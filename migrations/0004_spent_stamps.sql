-- Spent proof-of-work stamps (HASHCASH_BITS), by the SHA-256 of their text, until their date is no longer
-- accepted: a stamp buys one guest sign-up, across restarts too.
CREATE TABLE spent_stamps (
    key BLOB PRIMARY KEY,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX spent_stamps_expires ON spent_stamps (expires);
