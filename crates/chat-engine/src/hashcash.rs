//! Proof of work for guest sign-up: hashcash stamps (version 1's format, hashed with SHA-256), bound to this
//! server's name and the UTC date, each spent once.
//!
//! A stamp is `1:BITS:DATE:RESOURCE:EXT:RAND:COUNTER`. It is valid when `BITS` is at least the server's
//! `HASHCASH_BITS`, `RESOURCE` is the server's name, `DATE` (`YYMMDD`, optionally followed by `hhmm` or
//! `hhmmss`) is today's or yesterday's UTC date (so that a stamp minted just before midnight still works), the
//! SHA-256 of the whole stamp starts with at least `HASHCASH_BITS` zero bits, and it was not spent before.
//! A spent stamp is remembered until its date is no longer accepted, so memory holds at most two days of
//! sign-ups, and is capped besides.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use chat_core::UnixMillis;

const DAY_MS: u64 = 86_400_000;

/// The longest stamp looked at, in bytes: a real one is well under 100 plus the server's name.
const MAX_STAMP: usize = 512;

/// Why a stamp was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StampError {
    /// No stamp was given.
    #[error("a proof-of-work stamp is required")]
    Missing,
    /// The text is not a version 1 stamp.
    #[error("the stamp is not a version 1 hashcash stamp")]
    Malformed,
    /// The stamp is for another resource (another server).
    #[error("the stamp's resource is not this server's name")]
    WrongResource,
    /// The stamp's date is neither today nor yesterday (UTC).
    #[error("the stamp's date is not today or yesterday (UTC)")]
    WrongDate,
    /// The stamp claims, or its hash has, fewer zero bits than required.
    #[error("the stamp has too few zero bits")]
    TooFewBits,
    /// The stamp was used before.
    #[error("the stamp was already spent")]
    Spent,
}

/// A verified stamp: the key it is remembered under and when it may be forgotten.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verified {
    pub(crate) key: [u8; 32],
    pub(crate) expires: UnixMillis,
}

/// `YYMMDD` of the UTC day that holds `ms`.
fn yymmdd(ms: UnixMillis) -> String {
    let text =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    // `YYYY-MM-DDThh:mm:ssZ` for every date after 1970; anything else would be a bug in the formatter, and
    // an empty date then simply matches no stamp.
    let b = text.as_bytes();
    if b.len() < 10 {
        return String::new();
    }
    format!("{}{}{}", &text[2..4], &text[5..7], &text[8..10])
}

/// Checks a stamp's form, resource, date and work (not whether it was spent).
pub(crate) fn verify(
    stamp: &str,
    bits: u32,
    resource: &str,
    now: UnixMillis,
) -> Result<Verified, StampError> {
    if stamp.len() > MAX_STAMP || stamp.is_empty() {
        return Err(StampError::Malformed);
    }
    // The resource may itself hold colons (a server name is free text), so the three fixed fields are split
    // from the left and the three after it from the right.
    let mut left = stamp.splitn(4, ':');
    let (Some(ver), Some(claimed), Some(date), Some(rest)) =
        (left.next(), left.next(), left.next(), left.next())
    else {
        return Err(StampError::Malformed);
    };
    let mut right = rest.rsplitn(4, ':');
    let (Some(counter), Some(rand), Some(_ext), Some(res)) =
        (right.next(), right.next(), right.next(), right.next())
    else {
        return Err(StampError::Malformed);
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    };
    if ver != "1" || !token(rand) || !token(counter) {
        return Err(StampError::Malformed);
    }
    let claimed: u32 = claimed.parse().map_err(|_| StampError::Malformed)?;
    if !matches!(date.len(), 6 | 10 | 12) || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StampError::Malformed);
    }
    if res != resource {
        return Err(StampError::WrongResource);
    }
    let today = yymmdd(now);
    let yesterday = yymmdd(now.saturating_sub(DAY_MS));
    let day = &date[..6];
    let expires = if day == today {
        // Accepted until the end of tomorrow, when it becomes older than yesterday.
        (now / DAY_MS + 2) * DAY_MS
    } else if day == yesterday {
        (now / DAY_MS + 1) * DAY_MS
    } else {
        return Err(StampError::WrongDate);
    };
    if claimed < bits {
        return Err(StampError::TooFewBits);
    }
    let key: [u8; 32] = Sha256::digest(stamp.as_bytes()).into();
    if leading_zero_bits(&key) < bits {
        return Err(StampError::TooFewBits);
    }
    Ok(Verified { key, expires })
}

fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut n = 0;
    for b in hash {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Stamps spent and not yet expired, by their hash.
#[derive(Debug, Default)]
pub(crate) struct Spent {
    by_key: HashMap<[u8; 32], UnixMillis>,
}

/// What [`Spent::spend`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spend {
    /// The stamp is now spent.
    Fresh,
    /// It was spent before.
    Again,
    /// The table is full of stamps that have not expired yet; the earliest expires at this time.
    Full(UnixMillis),
}

impl Spent {
    /// Marks a verified stamp as spent, unless it was, or the table is full even after forgetting the expired.
    pub(crate) fn spend(&mut self, v: &Verified, now: UnixMillis, capacity: usize) -> Spend {
        if self.by_key.contains_key(&v.key) {
            return Spend::Again;
        }
        if self.by_key.len() >= capacity {
            self.forget(now);
            if self.by_key.len() >= capacity {
                let first = self.by_key.values().min().copied().unwrap_or(now);
                return Spend::Full(first);
            }
        }
        self.by_key.insert(v.key, v.expires);
        Spend::Fresh
    }

    /// Gives a stamp back: its sign-up was refused for another reason (a nick in use), so the work is not lost.
    pub(crate) fn unspend(&mut self, key: &[u8; 32]) {
        self.by_key.remove(key);
    }

    /// Forgets the stamps whose date is no longer accepted.
    pub(crate) fn forget(&mut self, now: UnixMillis) {
        self.by_key.retain(|_, expires| *expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T14:30:00Z.
    const NOW: u64 = 1_796_653_800_000;

    fn mint(bits: u32, date: &str, resource: &str) -> String {
        (0u64..)
            .map(|c| format!("1:{bits}:{date}:{resource}::cmFuZG9t:{c:x}"))
            .find(|s| leading_zero_bits(&Sha256::digest(s.as_bytes())) >= bits)
            .unwrap()
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(yymmdd(NOW), "261207");
        assert_eq!(yymmdd(NOW - DAY_MS), "261206");
        assert_eq!(yymmdd(0), "700101");
    }

    #[test]
    fn a_valid_stamp_verifies_and_is_spent_once() {
        let s = mint(8, "261207", "chatd");
        let v = verify(&s, 8, "chatd", NOW).unwrap();
        let mut spent = Spent::default();
        assert_eq!(spent.spend(&v, NOW, 10), Spend::Fresh);
        assert_eq!(spent.spend(&v, NOW, 10), Spend::Again);
        // Remembered until the end of tomorrow, then forgotten.
        spent.forget(NOW + DAY_MS);
        assert_eq!(spent.spend(&v, NOW + DAY_MS, 10), Spend::Again);
        spent.forget(NOW + 2 * DAY_MS);
        assert!(spent.by_key.is_empty());
    }

    #[test]
    fn yesterday_and_times_of_day_are_accepted() {
        verify(&mint(4, "261206", "chatd"), 4, "chatd", NOW).unwrap();
        verify(&mint(4, "2612062359", "chatd"), 4, "chatd", NOW).unwrap();
        let s = mint(4, "261205", "chatd");
        assert_eq!(
            verify(&s, 4, "chatd", NOW).unwrap_err(),
            StampError::WrongDate
        );
        let s = mint(4, "261208", "chatd");
        assert_eq!(
            verify(&s, 4, "chatd", NOW).unwrap_err(),
            StampError::WrongDate
        );
    }

    #[test]
    fn bad_stamps_are_refused() {
        let s = mint(8, "261207", "other");
        assert_eq!(
            verify(&s, 8, "chatd", NOW).unwrap_err(),
            StampError::WrongResource
        );
        // Claims too few bits, or has too few.
        let s = mint(4, "261207", "chatd");
        assert_eq!(
            verify(&s, 8, "chatd", NOW).unwrap_err(),
            StampError::TooFewBits
        );
        let lazy = "1:20:261207:chatd::cmFuZG9t:0";
        // Its hash has far fewer than 20 zero bits (a 1 in a million chance otherwise): checked, not assumed.
        assert!(leading_zero_bits(&Sha256::digest(lazy.as_bytes())) < 20);
        assert_eq!(
            verify(lazy, 20, "chatd", NOW).unwrap_err(),
            StampError::TooFewBits
        );
        for bad in [
            "",
            "x",
            "2:8:261207:chatd::a:b",
            "1:8:261207:chatd::a:",
            "1:x:261207:chatd::a:b",
            "1:8:2612:chatd::a:b",
            "1:8:26120a:chatd::a:b",
            "1:8:261207:chatd::a b:c",
        ] {
            assert_eq!(
                verify(bad, 0, "chatd", NOW).unwrap_err(),
                StampError::Malformed,
                "{bad}"
            );
        }
        assert_eq!(
            verify(&"1".repeat(600), 0, "chatd", NOW).unwrap_err(),
            StampError::Malformed
        );
    }

    #[test]
    fn resources_may_hold_colons() {
        let s = mint(4, "261207", "chat.example:8080");
        verify(&s, 4, "chat.example:8080", NOW).unwrap();
    }

    #[test]
    fn the_table_is_bounded() {
        let mut spent = Spent::default();
        let a = verify(&mint(2, "261207", "chatd"), 2, "chatd", NOW).unwrap();
        let b = Verified {
            key: [1; 32],
            expires: a.expires,
        };
        assert_eq!(spent.spend(&a, NOW, 1), Spend::Fresh);
        assert_eq!(spent.spend(&b, NOW, 1), Spend::Full(a.expires));
        spent.unspend(&a.key);
        assert_eq!(spent.spend(&b, NOW, 1), Spend::Fresh);
    }
}
