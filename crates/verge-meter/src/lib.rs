//! Metering: what every invocation cost, kept so that it can be billed,
//! limited and watched.
//!
//! The data plane hands one typed [`Invocation`] per request to the
//! [`Series`] of its app version; a series adds it to the running totals of
//! the current minute (one short lock, no allocation). A [`Flusher`] drains
//! every series into the [`UsageDb`] at a fixed interval: one additive
//! upsert per tenant, app, version and minute, never one row per request.
//! [`PriceSheet`] turns usage into cost; [`metric`] names every Prometheus
//! metric once.
//!
//! **Invariants**
//! - Usage is only ever added: a drained delta is written once, so a
//!   restart never counts anything twice. A `kill -9` loses at most the
//!   deltas drained since the last successful flush (one flush interval).
//! - A request rejected before its guest ran is counted as a request, but
//!   never billed guest time, CPU or memory.
//!
//! **API boundary**: no HTTP, no wasmtime; the node measures, this crate
//! adds up, stores and prices.

mod aggregate;
mod db;
mod flush;
mod invocation;
pub mod metric;
mod prices;

pub use aggregate::{Meter, Series, SeriesKey, Totals, UsageDelta};
pub use db::{Granularity, UsageCursor, UsageDb, UsageError, UsagePage, UsageQuery, UsageRow};
pub use flush::Flusher;
pub use invocation::{Invocation, Rejected};
pub use prices::{Cost, PriceError, PriceSheet, egress_bytes, gb_seconds};

/// Minutes since the Unix epoch, the unit usage is kept in.
pub fn unix_minute(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}
