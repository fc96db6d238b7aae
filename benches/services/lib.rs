//! Benchmarks of the companion services; see `tokens.rs` and BENCHMARKS.md.
