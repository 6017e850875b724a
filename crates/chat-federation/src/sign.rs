//! Signed link requests.
//!
//! A request from server `from` to server `to` carries three headers: [`SERVER_HEADER`] (`from`),
//! [`TIMESTAMP_HEADER`] (Unix milliseconds) and [`SIGNATURE_HEADER`] (`v1=` and the URL-safe base64 of an
//! HMAC-SHA256). The MAC covers, one per line: a version tag, the method, the path with its query, the
//! timestamp, `from`, `to`, and the hex SHA-256 of the body. Naming both servers keeps a request signed for
//! one server from being replayed to another that shares the key; hashing the body keeps the signed text
//! small and of one shape.
//!
//! The receiver ([`Verifier`]) refuses a timestamp further than its skew from its own clock, and a signature
//! it has already accepted while that timestamp is still inside the skew: a request is accepted once, and a
//! replay of it later is refused by the clock. What a replay guard holds is bounded by the skew window and
//! by a cap per sender.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The header naming the sending server.
pub const SERVER_HEADER: &str = "chatd-server";
/// The header with the request's time, in Unix milliseconds.
pub const TIMESTAMP_HEADER: &str = "chatd-timestamp";
/// The header with the request's signature.
pub const SIGNATURE_HEADER: &str = "chatd-signature";

/// What the MAC's text starts with: a new scheme gets a new tag.
const TAG: &str = "chatd-federation-v1";

/// One request as the MAC sees it.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    /// The HTTP method, upper case (`POST`).
    pub method: &'a str,
    /// The path and query as sent (`/api/v1/federation/relay`).
    pub path: &'a str,
    /// The sending server's name.
    pub from: &'a str,
    /// The receiving server's name.
    pub to: &'a str,
    /// When the request was signed, in Unix milliseconds.
    pub timestamp: u64,
    /// The request body.
    pub body: &'a [u8],
}

fn mac(key: &[u8], r: &Signed<'_>) -> [u8; 32] {
    let digest = Sha256::digest(r.body);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    let text = format!(
        "{TAG}\n{}\n{}\n{}\n{}\n{}\n{hex}",
        r.method, r.path, r.timestamp, r.from, r.to
    );
    m.update(text.as_bytes());
    m.finalize().into_bytes().into()
}

/// The [`SIGNATURE_HEADER`] value for a request.
pub fn sign(key: &[u8], request: &Signed<'_>) -> String {
    format!("v1={}", URL_SAFE_NO_PAD.encode(mac(key, request)))
}

/// Why a signed request was refused. Every case is answered with 401 and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing or not of its form.
    #[error("the request is not signed: {0}")]
    Missing(&'static str),
    /// The signature does not match the request and the link's key.
    #[error("the signature does not match")]
    Mismatch,
    /// The timestamp is further from this server's clock than the allowed skew.
    #[error(
        "the timestamp is {skew_ms} ms away from this server's clock (at most {max_ms} ms allowed)"
    )]
    Skew {
        /// How far off the request's clock was.
        skew_ms: u64,
        /// The allowed skew.
        max_ms: u64,
    },
    /// This exact request was accepted before.
    #[error("the request was already received (a replay)")]
    Replayed,
    /// The sender has more requests in the replay window than the guard keeps.
    #[error("too many requests from this server in the replay window")]
    Flood,
}

/// The signature carried by a request, decoded.
fn decode(header: &str) -> Result<[u8; 32], SignatureError> {
    let b64 = header
        .strip_prefix("v1=")
        .ok_or(SignatureError::Missing("the signature must start with v1="))?;
    let raw = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| SignatureError::Missing("the signature is not base64"))?;
    raw.try_into()
        .map_err(|_| SignatureError::Missing("the signature is not 32 bytes"))
}

/// Checks signatures with a bounded clock skew and refuses replays. One per server, shared by its routes.
#[derive(Debug)]
pub struct Verifier {
    skew_ms: u64,
    cap: usize,
    /// Per sender: the MACs accepted whose timestamps are still inside the window, and their timestamps in
    /// the order they were accepted (to forget them when they leave the window).
    seen: HashMap<String, Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    macs: HashMap<[u8; 32], u64>,
    order: VecDeque<(u64, [u8; 32])>,
}

impl Verifier {
    /// A verifier allowing `skew_ms` of clock difference either way and keeping at most `cap` accepted
    /// requests per sender inside the window.
    pub fn new(skew_ms: u64, cap: usize) -> Self {
        Self {
            skew_ms,
            cap: cap.max(1),
            seen: HashMap::new(),
        }
    }

    /// Checks a request signed with `key` at `now` (Unix milliseconds) and remembers it: the same request is
    /// refused from then on. Nothing is remembered for a refused request.
    pub fn verify(
        &mut self,
        key: &[u8],
        request: &Signed<'_>,
        signature: &str,
        now: u64,
    ) -> Result<(), SignatureError> {
        let given = decode(signature)?;
        let expected = mac(key, request);
        if !bool::from(given.ct_eq(&expected)) {
            return Err(SignatureError::Mismatch);
        }
        let skew_ms = now.abs_diff(request.timestamp);
        if skew_ms > self.skew_ms {
            return Err(SignatureError::Skew {
                skew_ms,
                max_ms: self.skew_ms,
            });
        }
        let seen = self.seen.entry(request.from.to_owned()).or_default();
        // Forget what the clock now refuses anyway. Timestamps arrive roughly in order; one far behind is
        // kept until those before it leave, which only delays forgetting.
        let oldest = now.saturating_sub(self.skew_ms);
        while let Some(&(ts, m)) = seen.order.front() {
            if ts >= oldest {
                break;
            }
            seen.order.pop_front();
            seen.macs.remove(&m);
        }
        if seen.macs.contains_key(&expected) {
            return Err(SignatureError::Replayed);
        }
        if seen.macs.len() >= self.cap {
            return Err(SignatureError::Flood);
        }
        seen.macs.insert(expected, request.timestamp);
        seen.order.push_back((request.timestamp, expected));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a shared link key";
    const NOW: u64 = 1_800_000_000_000;

    fn request(body: &[u8]) -> Signed<'_> {
        Signed {
            method: "POST",
            path: "/api/v1/federation/relay",
            from: "a.example",
            to: "b.example",
            timestamp: NOW,
            body,
        }
    }

    #[test]
    fn a_signed_request_is_accepted_once() {
        let mut v = Verifier::new(60_000, 100);
        let r = request(b"{\"events\":[]}");
        let sig = sign(KEY, &r);
        assert_eq!(v.verify(KEY, &r, &sig, NOW + 500), Ok(()));
        assert_eq!(
            v.verify(KEY, &r, &sig, NOW + 900),
            Err(SignatureError::Replayed)
        );
        // Once outside the window, the clock refuses it.
        assert!(matches!(
            v.verify(KEY, &r, &sig, NOW + 60_001),
            Err(SignatureError::Skew { .. })
        ));
    }

    #[test]
    fn every_signed_part_matters() {
        let r = request(b"body");
        let sig = sign(KEY, &r);
        let changed = [
            Signed { method: "GET", ..r },
            Signed {
                path: "/api/v1/federation/link",
                ..r
            },
            Signed {
                from: "c.example",
                ..r
            },
            Signed {
                to: "c.example",
                ..r
            },
            Signed {
                timestamp: NOW + 1,
                ..r
            },
            Signed { body: b"bodY", ..r },
        ];
        for other in &changed {
            let mut v = Verifier::new(60_000, 100);
            assert_eq!(
                v.verify(KEY, other, &sig, NOW),
                Err(SignatureError::Mismatch),
                "{other:?}"
            );
        }
        let mut v = Verifier::new(60_000, 100);
        assert_eq!(
            v.verify(b"another key", &r, &sig, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(v.verify(KEY, &r, &sig, NOW), Ok(()));
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let r = request(b"");
        let mut v = Verifier::new(60_000, 100);
        for bad in ["", "v2=abc", "v1=***", "v1=AAAA"] {
            assert!(
                matches!(v.verify(KEY, &r, bad, NOW), Err(SignatureError::Missing(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_clock_too_far_either_way_is_refused() {
        let mut v = Verifier::new(60_000, 100);
        for ts in [NOW - 60_001, NOW + 60_001] {
            let r = Signed {
                timestamp: ts,
                ..request(b"x")
            };
            let sig = sign(KEY, &r);
            assert_eq!(
                v.verify(KEY, &r, &sig, NOW),
                Err(SignatureError::Skew {
                    skew_ms: 60_001,
                    max_ms: 60_000
                })
            );
        }
    }

    #[test]
    fn the_replay_guard_is_bounded_and_forgets_what_the_clock_refuses() {
        let mut v = Verifier::new(1_000, 3);
        let bodies: Vec<Vec<u8>> = (0..5).map(|i| vec![i]).collect();
        for (i, body) in bodies.iter().take(3).enumerate() {
            let r = Signed {
                timestamp: NOW + i as u64,
                ..request(body)
            };
            assert_eq!(v.verify(KEY, &r, &sign(KEY, &r), NOW), Ok(()));
        }
        let r = Signed {
            timestamp: NOW + 3,
            ..request(&bodies[3])
        };
        assert_eq!(
            v.verify(KEY, &r, &sign(KEY, &r), NOW),
            Err(SignatureError::Flood)
        );
        // A second later the first three are outside the window: room again.
        let r = Signed {
            timestamp: NOW + 1_500,
            ..request(&bodies[4])
        };
        assert_eq!(v.verify(KEY, &r, &sign(KEY, &r), NOW + 1_500), Ok(()));
        assert_eq!(v.seen["a.example"].macs.len(), 1);
    }
}
