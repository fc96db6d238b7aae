//! Tributary's connectors: everything that touches files, stores and networks.
//!
//! - [`source`]: the source contract (partitions of raw records with positions) and the NDJSON file source.
//! - [`parquet`]: the partitioned, rolling Parquet sink over `object_store`.
//! - [`dead_letter`]: the NDJSON sink for DLQ and review records.
//! - [`lookup`]: loaders for enrich reference tables (CSV, Parquet, NDJSON).
//! - [`store`]: resolving a path or URL to an object store.

pub mod dead_letter;
pub mod lookup;
pub mod parquet;
pub mod source;
pub mod store;
