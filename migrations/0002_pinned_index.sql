-- A channel's pinned messages (the pins list) without scanning its history; partial, so it costs nothing
-- for the messages that are not pinned.
CREATE INDEX messages_pinned ON messages (channel, id) WHERE pinned = 1;
