//! Logs and, when asked for, traces over OTLP/HTTP (protobuf). Each request
//! is a span (`request`, with its id, method and matched route; see
//! [`crate::observe::track`]) that continues the caller's trace from its W3C
//! `traceparent` header; spans a handler opens nest inside it. Export is
//! enabled by `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL);
//! `OTEL_SERVICE_NAME` overrides the service's name.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {message}")]
pub struct TracesError {
    endpoint: String,
    message: String,
}

/// Keeps the exporter running; dropping it sends what is buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: flushing traces failed: {error}");
        }
    }
}

/// One export's longest wait, as the OTLP exporters' default.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest collector answer read back.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The exporter's HTTP client: the services' own reqwest (the OTLP crate's
/// client is a newer major version on another TLS stack). Async: the batch
/// processor runs on the service's tokio runtime.
#[derive(Debug)]
struct Client(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let response = self.0.execute(request.try_into()?).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err("the collector's answer is over 4 MiB".into());
        }
        let mut answer = http::Response::builder().status(status).body(body)?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// Starts logging to stderr (JSON lines when `json`, else text; `RUST_LOG`
/// filters, default `info`) and, if `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
/// exporting spans as `service`. Call it once, inside the tokio runtime.
pub fn init(service: &str, json: bool) -> Result<Telemetry, TracesError> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    init_with(service, json, endpoint.as_deref())
}

/// [`init`] with the collector given (`None`: logs only).
pub fn init_with(
    service: &str,
    json: bool,
    endpoint: Option<&str>,
) -> Result<Telemetry, TracesError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![if json {
        logs.json().flatten_event(true).boxed()
    } else {
        logs.boxed()
    }];
    let mut telemetry = Telemetry::default();
    if let Some(endpoint) = endpoint {
        let provider = provider(service, endpoint)?;
        let tracer = provider.tracer("tributary-kit");
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed());
        telemetry.provider = Some(provider);
    }
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init();
    Ok(telemetry)
}

fn provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, TracesError> {
    let failed = |message: String| TracesError {
        endpoint: endpoint.to_string(),
        message,
    };
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| failed(format!("building the HTTP client: {e}")))?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(Client(client))
        .with_endpoint(url)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .with_resource(Resource::builder_empty().with_service_name(service).build())
        .build())
}

/// The trace context a request's headers carry (`traceparent`), for its span.
pub fn remote_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    })
}
