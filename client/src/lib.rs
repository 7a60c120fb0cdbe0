//! The hybus client.
