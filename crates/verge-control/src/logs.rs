//! Live logs of apps: a `tracing` layer that keeps every event tagged with
//! an `app` field (guest output, refused and failed requests) in a small
//! ring and broadcasts it to followers (`GET /v1/apps/{app}/logs`).
//!
//! **Invariants**
//! - Memory is bounded: the ring keeps [`RECENT`] lines in all, and a
//!   follower that falls behind loses lines (told how many), never blocks
//!   the node.
//! - A follower only ever receives lines of the app it asked for, whose
//!   key includes the tenant.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::model::now;

/// Lines kept for `verge logs` without `-f`.
pub const RECENT: usize = 2000;

/// One log line of an app.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// `tenant/app`.
    #[serde(skip)]
    pub app: String,
    /// When (RFC 3339).
    pub time: String,
    /// `INFO`, `WARN`, ...
    pub level: String,
    /// The component, if known.
    pub component: String,
    /// The version serving the request (`v3`), if known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The guest's context of a `wasi:logging` record.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub context: String,
    /// The request, if known.
    pub request_id: String,
    /// `stdout`, `stderr`, `log` (`wasi:logging`), or empty for platform lines.
    pub stream: String,
    /// The text.
    pub message: String,
}

/// The hub: recent lines and live followers.
pub struct LogHub {
    live: broadcast::Sender<Arc<LogLine>>,
    recent: Mutex<VecDeque<Arc<LogLine>>>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub").finish_non_exhaustive()
    }
}

impl LogHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            live: broadcast::Sender::new(1024),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        })
    }

    /// The layer to install in the process's subscriber.
    pub fn layer(self: &Arc<Self>) -> LogLayer {
        LogLayer(self.clone())
    }

    fn publish(&self, line: LogLine) {
        let line = Arc::new(line);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        let _ = self.live.send(line);
    }

    /// The last `tail` lines of `app`, oldest first.
    pub fn recent(&self, app: &str, tail: usize) -> Vec<Arc<LogLine>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines: Vec<_> = recent
            .iter()
            .rev()
            .filter(|l| l.app == app)
            .take(tail)
            .cloned()
            .collect();
        lines.reverse();
        lines
    }

    /// Lines from now on (of every app; filter by [`LogLine::app`]).
    pub fn follow(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.live.subscribe()
    }
}

/// The `tracing` layer feeding a [`LogHub`].
pub struct LogLayer(Arc<LogHub>);

#[derive(Default)]
struct Fields {
    app: Option<String>,
    component: String,
    version: String,
    context: String,
    request_id: String,
    stream: String,
    message: String,
    other: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "app" => self.app = Some(value.to_string()),
            "component" => self.component = value.to_string(),
            "version" => self.version = value.to_string(),
            "context" => self.context = value.to_string(),
            "request_id" => self.request_id = value.to_string(),
            "stream" => self.stream = value.to_string(),
            "message" => self.message = value.to_string(),
            name => {
                let _ = write!(self.other, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(app) = fields.app else { return };
        self.0.publish(LogLine {
            app,
            time: now(),
            level: event.metadata().level().to_string(),
            component: fields.component,
            version: fields.version,
            context: fields.context,
            request_id: fields.request_id,
            stream: fields.stream,
            message: fields.message + &fields.other,
        });
    }
}
