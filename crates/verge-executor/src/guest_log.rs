//! Captures a guest's stdout and stderr and writes them to the node log,
//! one record per line, tagged with app, component and request id.
//!
//! **Invariants**: a guest cannot flood the log or the host's memory: lines
//! are cut at [`MAX_LINE`] bytes and each stream of a request writes at most
//! [`MAX_BYTES`]; the rest is dropped with one notice. Control characters
//! are escaped so a guest cannot forge log lines or terminal sequences.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::invoke::RequestId;

/// Longest line written as one record.
const MAX_LINE: usize = 16 * 1024;
/// Most bytes one stream of one request may log.
const MAX_BYTES: usize = 1024 * 1024;

/// One of a request's output streams. Clones share the line buffer.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    state: Arc<Mutex<State>>,
}

struct State {
    app: Arc<str>,
    component: Arc<str>,
    request_id: RequestId,
    stream: &'static str,
    line: Vec<u8>,
    written: usize,
    truncated: bool,
}

impl GuestOutput {
    pub(crate) fn new(
        app: Arc<str>,
        component: Arc<str>,
        request_id: RequestId,
        stream: &'static str,
    ) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                app,
                component,
                request_id,
                stream,
                line: Vec::new(),
                written: 0,
                truncated: false,
            })),
        }
    }

    fn write(&self, mut bytes: &[u8]) {
        let Ok(mut s) = self.state.lock() else { return };
        while !bytes.is_empty() {
            if s.written >= MAX_BYTES {
                if !s.truncated {
                    s.truncated = true;
                    tracing::warn!(
                        target: "verge::guest",
                        request_id = %s.request_id,
                        app = %s.app,
                        component = %s.component,
                        stream = s.stream,
                        "guest output exceeded {MAX_BYTES} bytes for this request; the rest is dropped"
                    );
                }
                return;
            }
            let room = (MAX_BYTES - s.written).min(bytes.len());
            let chunk = &bytes[..room];
            bytes = &bytes[room..];
            s.written += chunk.len();
            let mut rest = chunk;
            while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                s.line.extend_from_slice(&rest[..i]);
                s.emit();
                rest = &rest[i + 1..];
            }
            s.line.extend_from_slice(rest);
            while s.line.len() >= MAX_LINE {
                let tail = s.line.split_off(MAX_LINE);
                s.emit();
                s.line = tail;
            }
        }
    }
}

impl State {
    fn emit(&mut self) {
        let text = escape_controls(&String::from_utf8_lossy(&self.line));
        self.line.clear();
        tracing::info!(
            target: "verge::guest",
            request_id = %self.request_id,
            app = %self.app,
            component = %self.component,
            stream = self.stream,
            "{text}"
        );
    }
}

/// `text` with control characters (but tabs) escaped, so guest text in a log
/// line cannot start a new line or send terminal sequences.
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for State {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
