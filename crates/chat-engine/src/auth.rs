//! Credentials: tokens (256 random bits, kept only as SHA-256), argon2id password hashes, and the token
//! buckets behind login throttling and message rate limits.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::EngineError;

/// A fresh token and its hash: the token goes to the client once, the hash to the core.
pub(crate) fn new_token() -> Result<(String, [u8; 32]), EngineError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| EngineError::Hashing(format!("no randomness: {e}")))?;
    let token = hex(&raw);
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// SHA-256 of the token's text, as the core stores it.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a token has the shape the engine hands out (64 lowercase hex digits), checked before hashing so
/// that garbage is refused cheaply.
pub(crate) fn token_well_formed(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Constant-time equality of two hashes, so that the time a comparison takes says nothing about how many
/// leading bytes matched.
pub(crate) fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Argon2id with OWASP's minimum parameters: 19 MiB of memory, 2 passes, 1 lane.
fn hasher() -> Result<Argon2<'static>, EngineError> {
    let params =
        Params::new(19_456, 2, 1, None).map_err(|e| EngineError::Hashing(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password to a PHC string. Slow by design: call it on the blocking pool.
pub(crate) fn hash_password(password: &str) -> Result<String, EngineError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| EngineError::Hashing(format!("no randomness: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| EngineError::Hashing(e.to_string()))?;
    hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| EngineError::Hashing(e.to_string()))
}

/// Checks a password against a PHC string. A hash that does not parse is a mismatch, not an error: it can
/// only come from a damaged record, and the user must not learn more than "wrong password".
pub(crate) fn verify_password(password: &str, phc: &str) -> Result<bool, EngineError> {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return Ok(false);
    };
    // The parameters are read from the stored hash, so an account hashed with older settings still verifies.
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(EngineError::Hashing(e.to_string())),
    }
}

/// A token bucket measured in unix milliseconds: the engine's login and message limits, and the federation's
/// per-peer request limit.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: crate::RateLimit, now: u64) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, limit: crate::RateLimit, now: u64) {
        // Elapsed time in ms is far below 2^52, so the conversion to f64 is exact enough for a rate limit.
        #[allow(clippy::cast_precision_loss)]
        let elapsed = now.saturating_sub(self.at) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        self.at = self.at.max(now);
    }

    /// Milliseconds until one token is available (0 when one is there now).
    pub(crate) fn wait_ms(&mut self, limit: crate::RateLimit, now: u64) -> u64 {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            0
        } else {
            // The result is a small positive number of milliseconds; rounding up never under-reports.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let ms = ((1.0 - self.tokens) / limit.per_second * 1000.0).ceil() as u64;
            ms.max(1)
        }
    }

    /// Takes a token if there is one; otherwise says how long to wait (ms, at least 1).
    pub fn take(&mut self, limit: crate::RateLimit, now: u64) -> Result<(), u64> {
        match self.wait_ms(limit, now) {
            0 => {
                self.tokens -= 1.0;
                Ok(())
            }
            wait => Err(wait),
        }
    }

    /// Returns a token taken by an action that turned out not to count (a login that succeeded).
    pub(crate) fn give_back(&mut self, limit: crate::RateLimit, now: u64) {
        self.refill(limit, now);
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.burst));
    }

    /// Whether the bucket is full again (and so may be forgotten).
    pub(crate) fn is_full(&mut self, limit: crate::RateLimit, now: u64) -> bool {
        self.refill(limit, now);
        self.tokens >= f64::from(limit.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_refill_rate() {
        let limit = crate::RateLimit {
            burst: 3,
            per_second: 2.0,
        };
        let mut b = Bucket::full(limit, 1_000);
        for _ in 0..3 {
            assert_eq!(b.take(limit, 1_000), Ok(()));
        }
        assert_eq!(b.take(limit, 1_000), Err(500));
        assert_eq!(b.take(limit, 1_250), Err(250));
        assert_eq!(b.take(limit, 1_500), Ok(()));
        // A long pause refills to the burst, no more.
        for _ in 0..3 {
            assert_eq!(b.take(limit, 60_000), Ok(()));
        }
        assert!(b.take(limit, 60_000).is_err());
        // A clock that steps back takes nothing and gives nothing.
        assert!(b.take(limit, 59_000).is_err());
    }

    #[test]
    fn tokens_are_hex_and_hash_stably() {
        let (token, hash) = new_token().unwrap();
        assert!(token_well_formed(&token));
        assert!(same_hash(&hash, &token_hash(&token)));
        assert!(!token_well_formed("zz"));
    }

    #[test]
    fn passwords_verify() {
        let phc = hash_password("hunter2").unwrap();
        // Hashing is below the password rule: any text hashes.
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("hunter2", &phc).unwrap());
        assert!(!verify_password("hunter3", &phc).unwrap());
        assert!(!verify_password("x", "not a hash").unwrap());
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let limit = crate::RateLimit {
            burst: 2,
            per_second: 10.0,
        };
        let mut b = Bucket::full(limit, 0);
        assert!(b.take(limit, 0).is_ok());
        assert!(b.take(limit, 0).is_ok());
        assert_eq!(b.take(limit, 0), Err(100));
        assert!(b.take(limit, 100).is_ok());
    }
}
