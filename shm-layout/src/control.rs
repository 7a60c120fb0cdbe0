//! Control-protocol messages.
