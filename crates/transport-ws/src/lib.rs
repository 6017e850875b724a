//! The Discord-compatible WebSocket gateway (`/gateway`) and REST API (`/api/v10`) of chatd.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and has no behaviour.
#![deny(missing_docs)]
