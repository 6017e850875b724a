//! Server links (SPEC §13): independent chatd servers relay events to each other over HTTP.
//!
//! This crate adapts the engine to server-to-server HTTP, as the transports adapt it to clients. So far it
//! holds what identifies a peer ([`peer`]: its name and URL, checked) and the request signatures every link
//! request carries ([`sign`]): HMAC-SHA256 with the link's key over the method, path, timestamp, both
//! servers' names and the body's digest, checked with a bounded clock skew and a replay guard
//! ([`sign::Verifier`]). [`Federation::router`] answers the handshake (`POST /api/v1/federation/link`) and
//! the status (`GET /api/v1/federation/status`) for the links of the store (`chatd link add`), and relays
//! ops between linked servers ([`outbox`]: each link's durable outbox, and the relay route
//! `POST /api/v1/federation/relay`).
#![deny(missing_docs)]

pub mod outbox;
pub mod peer;
mod routes;
pub mod sign;

pub use crate::routes::{Batch, Federation, Hello, PeerStatus, Settings, Taken};
