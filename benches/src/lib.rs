//! Shared helpers for the hybus benchmarks.
