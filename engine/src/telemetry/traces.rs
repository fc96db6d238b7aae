//! Optional trace export over OTLP/HTTP (protobuf): one span per batch
//! (`batch`, with its partition and record count) and one per stage inside
//! it (`stage`), sent in the background by a batching exporter. Enabled by
//! `run --otlp-endpoint URL` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`;
//! `OTEL_SERVICE_NAME` names the service (default `tributary`).

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
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
    let failed = |message: String| TracesError {
        endpoint: endpoint.to_string(),
        message,
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(Blocking::new().map_err(failed)?)
        .with_endpoint(url)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "tributary".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder_empty().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("tributary");
    Ok((Traces(provider), tracer))
}

/// How long one export may take, as the OTLP exporter's default.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest collector answer read back (the exporter's own clients' limit).
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// The exporter's HTTP client: the engine's reqwest, so that traces bring
/// no second HTTP and TLS stack into the build (the OTLP crate's own
/// reqwest client is a newer major version on aws-lc-rs). Blocking, as the
/// batch exporter runs on its own thread, outside any async runtime.
#[derive(Debug)]
struct Blocking(reqwest::blocking::Client);

impl Blocking {
    fn new() -> Result<Self, String> {
        // Built off the caller's thread: the blocking client starts its own
        // runtime, which must not happen inside the engine's.
        std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
        })
        .join()
        .map_err(|_| "building the HTTP client panicked".to_string())?
        .map(Blocking)
        .map_err(|e| format!("building the HTTP client: {e}"))
    }
}

#[async_trait::async_trait]
impl HttpClient for Blocking {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let mut response = self.0.execute(request.try_into()?)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        response.take(MAX_ANSWER_BYTES + 1).read_to_end(&mut body)?;
        if body.len() as u64 > MAX_ANSWER_BYTES {
            return Err("the collector's answer is over 4 MiB".into());
        }
        let mut answer = http::Response::builder()
            .status(status)
            .body(Bytes::from(body))?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}
