//! `wasi:logging`: a guest's log records go to the node log, tagged with
//! app, component, version and request id, at the guest's level
//! (`critical` is logged as an error).
//!
//! **Invariants**: as for stdout and stderr, a request logs at most
//! [`MAX_BYTES`]; a message is cut at [`MAX_MESSAGE`] bytes and a context at
//! [`MAX_CONTEXT`]; control characters are escaped so a guest cannot forge
//! log lines.

use super::bindings::logging::wasi::logging::logging::{self, Level};
use crate::host::Host;

/// Most bytes of messages one request may log.
const MAX_BYTES: usize = 1024 * 1024;
/// Longest message logged as is.
const MAX_MESSAGE: usize = 16 * 1024;
/// Longest context logged as is.
const MAX_CONTEXT: usize = 256;

/// What a request has logged so far.
#[derive(Default)]
pub(crate) struct LogState {
    written: usize,
    truncated: bool,
}

/// `text` cut at `max` bytes (on a character boundary), control
/// characters escaped.
fn clean(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = crate::guest_log::escape_controls(&text[..end]);
    if end < text.len() {
        out.push_str(" [cut]");
    }
    out
}

macro_rules! guest_event {
    ($level:expr, $host:expr, $context:expr, $message:expr) => {
        tracing::event!(
            target: "verge::guest",
            $level,
            request_id = %$host.shared().id,
            app = %$host.apis.app,
            component = %$host.shared().component,
            version = $host.apis.grants.version.as_deref().unwrap_or(""),
            stream = "log",
            context = %$context,
            "{}",
            $message
        )
    };
}

impl logging::Host for Host {
    async fn log(
        &mut self,
        level: Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        let state = &mut self.apis.log;
        if state.written >= MAX_BYTES {
            if !state.truncated {
                state.truncated = true;
                guest_event!(
                    tracing::Level::WARN,
                    self,
                    "",
                    format!(
                        "guest log exceeded {MAX_BYTES} bytes for this request; the rest is dropped"
                    )
                );
            }
            return Ok(());
        }
        state.written += message.len() + context.len();
        let context = clean(&context, MAX_CONTEXT);
        let message = clean(&message, MAX_MESSAGE);
        match level {
            Level::Trace => guest_event!(tracing::Level::TRACE, self, context, message),
            Level::Debug => guest_event!(tracing::Level::DEBUG, self, context, message),
            Level::Info => guest_event!(tracing::Level::INFO, self, context, message),
            Level::Warn => guest_event!(tracing::Level::WARN, self, context, message),
            Level::Error | Level::Critical => {
                guest_event!(tracing::Level::ERROR, self, context, message)
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn messages_are_cut_on_characters_and_escaped() {
        assert_eq!(clean("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(clean("ééé", 3), "é [cut]");
        assert_eq!(clean("tab\there", 100), "tab\there");
    }
}
