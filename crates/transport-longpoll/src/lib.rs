//! The IRC-style JSON over HTTP long-poll API of chatd (`/api/v1`).
//!
//! Not built yet: this crate is a placeholder in the workspace layout and has no behaviour.
#![deny(missing_docs)]
