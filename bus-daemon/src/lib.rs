//! The hybus daemon as a library.
