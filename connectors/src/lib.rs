//! Tributary's connectors: everything that touches files, stores and networks.
//!
//! - [`source`]: the source contract (partitions of raw records with positions) and the NDJSON file source;
//!   [`object_source`] reads NDJSON objects from S3.
//! - [`kafka`]: the Kafka consumer-group source, the producers (outputs, dead-letter topics), admin and tails.
//! - [`parquet`]: the partitioned, rolling Parquet sink over `object_store`; [`raw_zone`] archives messages as consumed.
//! - [`dead_letter`]: the NDJSON sink for DLQ and review records, and reading them back for inspect and replay.
//! - [`store`]: resolving a path or `s3://` URL to an object store, retried with backoff.
//! - [`retry`]: the retry policy (exponential backoff with jitter) and its targets' state.
//! - [`commit_log`]: the per-partition manifests behind exactly-once output.
//! - [`snowflake`]: the SQL API client and the loader that `COPY`s published files once.
//! - [`lookup`]: enrich reference tables from files (CSV, Parquet, NDJSON), PostgreSQL and Redis, with an LRU cache.
//! - [`secret`]: values kept out of logs and `Debug` (keys, passwords, URLs that carry them).
//! - [`fault`]: crash and pause points for the fault tests.

pub mod commit_log;
pub mod dead_letter;
pub mod fault;
pub mod kafka;
pub mod lookup;
pub mod object_source;
pub mod parquet;
pub mod raw_zone;
pub mod retry;
pub mod secret;
pub mod snowflake;
pub mod source;
pub mod store;
