//! End-to-end tests: the real `verge` binary, started on an OS-chosen port,
//! serving real components built from `examples/` and `crates/test-programs`
//! for wasm32-wasip2, driven over real HTTP connections.
//!
//! Timings never decide a test: these machines are shared and noisy.

// Test helpers are `pub` for the modules of this binary, not an API.
#![allow(unreachable_pub)]

mod support;

mod ai;
mod bad_input;
mod cache;
mod cluster;
mod compat;
mod control;
mod deploys;
mod examples;
mod http;
mod isolation;
mod lifecycle;
mod limits;
mod metering;
mod new;
mod outbound;
mod routes;
mod secrets;
mod state;
mod toolchains;
mod tracing;
mod watch;
