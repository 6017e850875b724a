//! The async heart of chatd: owns the core and the store, sequences commands, group-commits events, wakes
//! readers and drives the core's timers.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and has no behaviour.
#![deny(missing_docs)]
