//! The row encodings both SQL stores share: ids and bit sets in signed 64-bit columns, postcard payloads,
//! and the error a record that does not decode becomes.

use chat_core::Event;
use chat_log::StoreError;

/// Stores a u64 id or bit set in a signed 64-bit column (SQLite's INTEGER, PostgreSQL's BIGINT); the cast
/// round-trips every value exactly. Only for values SQL never orders or compares by size (ids are
/// snowflakes, far below `i64::MAX` anyway): a time or a seq a caller may pass at `u64::MAX` goes through each
/// store's `bound`, which keeps the order.
pub(crate) fn sql(v: u64) -> i64 {
    v as i64
}

/// Reads back a u64 stored by [`sql`] or a store's `bound`.
pub(crate) fn uns(v: i64) -> u64 {
    v as u64
}

pub(crate) fn corrupt(what: &'static str, at: u64, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        at,
        detail: detail.to_string(),
    }
}

pub(crate) fn id_of<T>(
    raw: i64,
    make: fn(u64) -> Option<T>,
    what: &'static str,
) -> Result<T, StoreError> {
    make(uns(raw)).ok_or_else(|| corrupt(what, uns(raw), "a zero id"))
}

pub(crate) fn opt_id<T>(
    raw: Option<i64>,
    make: fn(u64) -> Option<T>,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    raw.map(|r| id_of(r, make, what)).transpose()
}

pub(crate) fn encode<T: serde::Serialize>(
    v: &T,
    what: &'static str,
    at: u64,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| corrupt(what, at, e))
}

pub(crate) fn decode_event(seq: i64, payload: &[u8]) -> Result<Event, StoreError> {
    postcard::from_bytes(payload).map_err(|e| corrupt("event", uns(seq), e))
}
