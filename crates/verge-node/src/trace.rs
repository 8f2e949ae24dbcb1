//! OpenTelemetry spans for requests: `request` (server), then `route`,
//! `instantiate`, `guest`, and one `outbound` (client) span per outbound
//! call, built from the executor's timeline when the request is over.
//!
//! A W3C `traceparent` on the incoming request makes the request span its
//! child and follows its sampled flag; a malformed one is ignored (a new
//! trace starts). Outbound calls of a recorded request carry `traceparent`
//! naming their own span, and the guest sees one naming its `guest` span
//! (so a guest that forwards it keeps the tree whole); an unsampled request
//! records nothing and passes its context on, flagged unsampled.
//!
//! **Invariant**: with tracing off the node does nothing per request; with
//! it on, spans are handed to the exporter's queue, never awaited.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    Span, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use verge_executor::{GuestTrace, Invocation, RequestId, TraceParent, UsageSink, new_span_id};

use crate::usage::AppUsage;

/// How the node traces.
pub struct Tracing {
    /// Where spans go.
    pub tracer: BoxedTracer,
    /// Share of new traces (no incoming `traceparent`) that are recorded,
    /// from 0 to 1.
    pub sample_ratio: f64,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("sample_ratio", &self.sample_ratio)
            .finish_non_exhaustive()
    }
}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Incoming {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    sampled: bool,
}

/// Exactly `N` bytes of lowercase hex, as W3C trace context requires.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    const_hex::decode_to_array(text).ok()
}

/// Reads a W3C `traceparent` header (`00-TRACE-PARENT-FLAGS`); anything
/// malformed is `None`. Future versions are read by their first four
/// fields, as the specification asks.
pub(crate) fn parse_traceparent(headers: &HeaderMap) -> Option<Incoming> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let version = unhex::<1>(version)?[0];
    // Version 00 has exactly four fields; ff is forbidden.
    if version == 0xff || (version == 0 && parts.next().is_some()) {
        return None;
    }
    let trace_id = unhex::<16>(trace)?;
    let parent_id = unhex::<8>(parent)?;
    let flags = unhex::<1>(flags)?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Incoming {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

/// One traced request, from arrival to its last span.
pub(crate) struct RequestTrace {
    tracing: Arc<Tracing>,
    trace_id: [u8; 16],
    remote_parent: Option<[u8; 8]>,
    request_span: [u8; 8],
    guest_span: [u8; 8],
    arrived: (Instant, SystemTime),
    routed: Option<Instant>,
    attributes: Vec<KeyValue>,
    /// Recorded; else only passed on.
    sampled: bool,
}

impl RequestTrace {
    /// Starts the trace of a request: recorded, or (not sampled) only
    /// passed on to its outbound calls.
    pub(crate) fn start(
        tracing: &Arc<Tracing>,
        headers: &HeaderMap,
        method: &http::Method,
        path: &str,
        id: RequestId,
    ) -> Self {
        let arrived = (Instant::now(), SystemTime::now());
        let (trace_id, remote_parent, sampled) = match parse_traceparent(headers) {
            Some(incoming) => (
                incoming.trace_id,
                Some(incoming.parent_id),
                incoming.sampled,
            ),
            None => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&new_span_id());
                id[8..].copy_from_slice(&new_span_id());
                // Ratio sampling on the trace id, as TraceIdRatioBased does.
                let mut low = [0u8; 8];
                low.copy_from_slice(&id[8..]);
                let low = u64::from_be_bytes(low);
                let sampled = ((low >> 11) as f64) < tracing.sample_ratio * (1u64 << 53) as f64;
                (id, None, sampled)
            }
        };
        let attributes = if sampled {
            vec![
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", path.chars().take(512).collect::<String>()),
                KeyValue::new("verge.request_id", id.to_string()),
            ]
        } else {
            Vec::new()
        };
        Self {
            tracing: tracing.clone(),
            trace_id,
            remote_parent,
            request_span: new_span_id(),
            guest_span: new_span_id(),
            arrived,
            routed: None,
            attributes,
            sampled,
        }
    }

    /// The request reached `app` (`tenant/app`, version).
    pub(crate) fn routed(&mut self, app: &str, version: Option<&str>) {
        self.routed = Some(Instant::now());
        if !self.sampled {
            return;
        }
        self.attributes
            .push(KeyValue::new("verge.app", app.to_string()));
        if let Some(v) = version {
            self.attributes
                .push(KeyValue::new("verge.version", v.to_string()));
        }
    }

    /// What the executor needs to propagate the trace.
    pub(crate) fn parent_for_guest(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            // Unsampled: downstream continues from the caller's span.
            span_id: match (self.sampled, self.remote_parent) {
                (false, Some(caller)) => caller,
                _ => self.guest_span,
            },
            sampled: self.sampled,
        }
    }

    fn time(&self, at: Instant) -> SystemTime {
        self.arrived.1 + at.saturating_duration_since(self.arrived.0)
    }

    fn context(&self, span: [u8; 8], remote: bool) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::default(),
        ))
    }

    /// Emits one finished span; `error` marks it failed.
    #[allow(clippy::too_many_arguments)] // One call site per span kind; a struct would only rename them.
    fn span(
        &self,
        name: &'static str,
        kind: SpanKind,
        id: Option<[u8; 8]>,
        parent: &Context,
        (start, end): (Instant, Instant),
        attributes: Vec<KeyValue>,
        error: Option<String>,
    ) {
        let mut builder = SpanBuilder::from_name(name)
            .with_kind(kind)
            .with_start_time(self.time(start))
            .with_attributes(attributes);
        builder.trace_id = Some(TraceId::from_bytes(self.trace_id));
        if let Some(id) = id {
            builder.span_id = Some(SpanId::from_bytes(id));
        }
        let mut span = self.tracing.tracer.build_with_context(builder, parent);
        if let Some(error) = error {
            span.set_status(Status::error(error));
        }
        span.end_with_timestamp(self.time(end));
    }

    /// Emits the spans of a request answered with `status`, using the
    /// executor's timeline when its guest ran.
    pub(crate) fn finish(self, status: u16, guest: Option<GuestTrace>) {
        if !self.sampled {
            return;
        }
        let end = Instant::now();
        let root_parent = match self.remote_parent {
            Some(parent) => self.context(parent, true),
            None => Context::new(),
        };
        let mut attributes = self.attributes.clone();
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        let request = self.context(self.request_span, false);
        if let Some(routed) = self.routed {
            self.span(
                "route",
                SpanKind::Internal,
                None,
                &request,
                (self.arrived.0, routed),
                Vec::new(),
                None,
            );
        }
        if let Some(guest) = &guest {
            let ready = guest.instantiated.unwrap_or(end);
            self.span(
                "instantiate",
                SpanKind::Internal,
                None,
                &request,
                (guest.started, ready),
                Vec::new(),
                None,
            );
            let done = guest.finished.unwrap_or(end);
            self.span(
                "guest",
                SpanKind::Internal,
                Some(self.guest_span),
                &request,
                (ready, done),
                Vec::new(),
                None,
            );
            let parent = self.context(self.guest_span, false);
            for call in &guest.outbound {
                let mut attributes = vec![
                    KeyValue::new("http.request.method", call.method.clone()),
                    KeyValue::new("server.address", call.destination.clone()),
                ];
                if let Some(status) = call.status {
                    attributes.push(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status),
                    ));
                }
                let ended = call.ended.unwrap_or(done);
                self.span(
                    "outbound",
                    SpanKind::Client,
                    Some(call.span_id),
                    &parent,
                    (call.started, ended),
                    attributes,
                    None,
                );
            }
        }
        self.span(
            "request",
            SpanKind::Server,
            Some(self.request_span),
            &root_parent,
            (self.arrived.0, end),
            attributes,
            (status >= 500).then(|| format!("status {status}")),
        );
    }
}

/// The usage sink of a traced request: usage as usual, then the spans.
struct TracedSink {
    trace: std::sync::Mutex<Option<RequestTrace>>,
    usage: Option<Arc<AppUsage>>,
}

impl UsageSink for TracedSink {
    fn finished(&self, invocation: Invocation, guest: Option<GuestTrace>) {
        let status = invocation.status;
        if let Some(usage) = &self.usage {
            usage.finished(invocation, None);
        }
        let trace = self.trace.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(trace) = trace {
            trace.finish(status, guest);
        }
    }
}

/// What the executor gets for a request: where its usage goes and the
/// trace context its outbound calls carry. A recorded request reports
/// through its trace, and its guest sees its `guest` span in
/// `traceparent` (a guest that forwards the header keeps the tree whole);
/// an unrecorded one only passes its context on.
pub(crate) fn executor_context(
    trace: Option<RequestTrace>,
    usage: Option<Arc<AppUsage>>,
    headers: &mut HeaderMap,
) -> (Option<Arc<dyn UsageSink>>, Option<TraceParent>) {
    let parent = trace.as_ref().map(RequestTrace::parent_for_guest);
    match trace {
        Some(trace) if trace.sampled => {
            if let Some(parent) = parent
                && let Ok(value) = HeaderValue::from_str(&parent.header_for(parent.span_id))
            {
                headers.insert("traceparent", value);
            }
            let sink = TracedSink {
                trace: std::sync::Mutex::new(Some(trace)),
                usage,
            };
            (Some(Arc::new(sink)), parent)
        }
        _ => (usage.map(|u| u as Arc<dyn UsageSink>), parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Incoming> {
        let mut h = HeaderMap::new();
        h.insert("traceparent", value.parse().ok()?);
        parse_traceparent(&h)
    }

    #[test]
    fn traceparent_is_read_strictly() {
        let ok = parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").expect("valid");
        assert!(ok.sampled);
        assert_eq!(
            ok.parent_id,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        let unsampled =
            parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").expect("valid");
        assert!(!unsampled.sampled);
        // A future version may add fields.
        assert!(parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra").is_some());
        for bad in [
            "",
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319cz-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        // Two headers are ambiguous: ignored.
        let mut h = HeaderMap::new();
        h.append(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .expect("v"),
        );
        h.append(
            "traceparent",
            "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .expect("v"),
        );
        assert!(parse_traceparent(&h).is_none());
    }
}
