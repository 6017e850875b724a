//! chat-core's integration tests: one binary, one module per kind of test.

mod federation;
mod harness;
mod hostile;
mod props;
mod restart;
mod scenarios;
