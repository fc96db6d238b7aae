//! Optional trace export over OTLP/HTTP (protobuf): one span per batch
//! (`batch`, with its partition and record count) and one per stage inside
//! it (`stage`), sent in the background by a batching exporter. Enabled by
//! `run --otlp-endpoint URL` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`;
//! `OTEL_SERVICE_NAME` names the service (default `tributary`).

use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {message}")]
pub struct TracesError {
    endpoint: String,
    message: String,
}

/// The running exporter; dropping it sends what is buffered and stops it.
pub struct Traces(SdkTracerProvider);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(error) = self.0.shutdown() {
            eprintln!("warning: flushing traces failed: {error}");
        }
    }
}

/// An exporter to `endpoint` (the collector's base URL; `/v1/traces` is added)
/// and the tracer spans go through.
pub fn otlp(endpoint: &str) -> Result<(Traces, SdkTracer), TracesError> {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| TracesError {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "tributary".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder_empty().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("tributary");
    Ok((Traces(provider), tracer))
}
