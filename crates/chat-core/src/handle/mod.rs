//! Command handlers, one file per area. Each checks everything first and emits events last, so that a
//! refused command changes nothing.

pub(crate) mod channel;
pub(crate) mod message;
pub(crate) mod session;
pub(crate) mod space;
