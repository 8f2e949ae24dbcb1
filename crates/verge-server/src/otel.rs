//! Exporting traces: an OTLP/HTTP exporter (JSON encoding) behind the
//! OpenTelemetry SDK's batch processor, which sends from a thread of its
//! own and drops spans rather than block when its queue is full.
//!
//! Batching follows the SDK's standard variables (`OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE`, ...).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use verge_node::Tracing;

/// A running exporter; [`Traces::shutdown`] sends what is queued.
pub struct Traces {
    provider: SdkTracerProvider,
    /// What the node traces with.
    pub tracing: Arc<Tracing>,
}

/// The exporter of traces could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {source}")]
pub struct TraceError {
    /// The collector's URL.
    pub endpoint: String,
    /// Why.
    #[source]
    pub source: opentelemetry_otlp::ExporterBuildError,
}

impl Traces {
    /// Exports to `endpoint` (the full URL, e.g.
    /// `http://collector:4318/v1/traces`), recording `sample_ratio` of new
    /// traces.
    pub fn start(endpoint: &str, sample_ratio: f64) -> Result<Self, TraceError> {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| TraceError {
                endpoint: endpoint.to_string(),
                source,
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("verge").build())
            .build();
        let tracer = opentelemetry::global::BoxedTracer::new(Box::new(provider.tracer("verge")));
        Ok(Self {
            provider,
            tracing: Arc::new(Tracing {
                tracer,
                sample_ratio,
            }),
        })
    }

    /// Sends the spans still queued and stops the exporter (blocking, at
    /// most a few seconds).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!("traces not all exported at shutdown: {e}");
        }
    }
}
