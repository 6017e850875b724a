//! The engine's typed errors: refusals the client caused, misuse of the API, and failures of the engine.

use std::sync::Arc;
use std::time::Duration;

use chat_core::ReplayError;
use chat_log::StoreError;

use crate::hashcash::StampError;
use crate::password::PasswordError;

/// Why the engine did not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The core refused the command (a typed rule: nick in use, no such channel, slow mode...). Nothing changed.
    #[error(transparent)]
    Refused(#[from] chat_core::Error),
    /// Too many messages, or too many failed logins from this account or address: try again after
    /// `retry_after`.
    #[error("rate limited: retry after {} ms", retry_after.as_millis())]
    RateLimited {
        /// How long to wait before the request would be accepted.
        retry_after: Duration,
        /// The size of the bucket that is empty: how many such requests may come back to back.
        limit: u32,
    },
    /// The nick and password do not match an account (also for unknown nicks and guests, so that a caller
    /// cannot tell which).
    #[error("invalid nick or password")]
    InvalidCredentials,
    /// The token is malformed or belongs to no client (logged out, expired, never issued).
    #[error("invalid or expired token")]
    InvalidToken,
    /// An argument the engine checks itself is unacceptable (a nonce over 64 bytes, an empty password...).
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which argument.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A new password breaks the password rule (length, or one of the most common passwords). Nothing changed.
    #[error("invalid password: {0}")]
    Password(#[from] PasswordError),
    /// A guest sign-up came without a valid, unspent proof-of-work stamp while `HASHCASH_BITS` is above zero.
    #[error("proof of work required ({bits} bits): {reason}")]
    HashcashRequired {
        /// The zero bits a stamp must have.
        bits: u32,
        /// The resource a stamp must name (the server's name).
        resource: String,
        /// What was wrong with the stamp given (or that none was).
        reason: StampError,
    },
    /// The engine is shutting down or has shut down: it takes no new requests.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A log commit failed, so the in-memory state may hold changes the log lacks. The engine refuses every
    /// request from then on; restarting it rebuilds the state from the log.
    #[error("the engine stopped after a fatal error: {reason}")]
    Stopped {
        /// What failed.
        reason: Arc<str>,
    },
    /// Storage failed while serving a read or while starting.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The stored log or snapshot does not rebuild a state (a damaged database or a bug).
    #[error("the stored log cannot be replayed: {0}")]
    Replay(#[from] ReplayError),
    /// The stored snapshot cannot be decoded.
    #[error("the stored snapshot at seq {seq} cannot be decoded: {detail}")]
    Snapshot {
        /// The snapshot's seq.
        seq: u64,
        /// The decoder's message.
        detail: String,
    },
    /// Reading or writing the attachments' files under DATA_DIR failed.
    #[error("attachment files: {0}")]
    Files(std::io::Error),
    /// In a cluster: no node could settle the command just now (the writer is changing, or unreachable). It may
    /// or may not have been applied; the engine has already resent it (with the same nonce, so it is applied
    /// at most once) as often as it waits for, so the caller may try again later.
    #[error("the server's writer is unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: Arc<str>,
    },
    /// Hashing or verifying a password failed inside the hashing library (not a wrong password).
    #[error("password hashing failed: {0}")]
    Hashing(String),
}
