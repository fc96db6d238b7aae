//! Tributary's connectors: everything that touches files, stores and networks.
//!
//! - [`source`]: the source contract (partitions of raw records with positions) and the NDJSON file source.
//! - [`parquet`]: the partitioned, rolling Parquet sink over `object_store`.
//! - [`dead_letter`]: the NDJSON sink for DLQ and review records.
//! - [`lookup`]: loaders for enrich reference tables (CSV, Parquet, NDJSON).
//! - [`kafka`]: the Kafka consumer-group source and the Kafka producers.
//! - [`commit_log`]: the per-partition manifests behind exactly-once output.
//! - [`store`]: resolving a path or URL to an object store.

pub mod commit_log;
pub mod dead_letter;
pub mod fault;
pub mod kafka;
pub mod lookup;
pub mod object_source;
pub mod parquet;
pub mod raw_zone;
pub mod retry;
pub mod snowflake;
pub mod source;
pub mod store;
