//! `verge usage`: metered usage and its cost, per app and time bucket.
//!
//! Pages are fetched one at a time and printed as they arrive, so a query
//! over a long range never holds more than one page.

use std::io::Write;

use verge_api::{UsagePage, UsageRow};

use crate::Failure;
use crate::client::Client;
use crate::env::Env;
use crate::manage::block_on;
use crate::state::encode;

/// Arguments of `verge usage`.
#[derive(Debug, clap::Args)]
pub(crate) struct UsageArgs {
    /// Only this tenant (another tenant's needs the `tenants:admin` scope)
    /// [default: the token's tenant; with `tenants:admin`, every tenant].
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,

    /// Only this app.
    #[arg(long, value_name = "APP")]
    app: Option<String>,

    /// Start: a duration back from now (`24h`, `7d`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = "24h")]
    since: String,

    /// End (excluded), in the same forms [default: now].
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,

    /// Bucket width.
    #[arg(long, value_enum, default_value = "hour")]
    by: By,

    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum By {
    Minute,
    Hour,
    Day,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

/// Columns of the CSV output, each a field of a usage row.
const CSV_FIELDS: &[&str] = &[
    "start",
    "tenant",
    "app",
    "requests",
    "invocations",
    "rejected_quota",
    "rejected_limit",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "cold_starts",
    "wall_seconds",
    "billed_ms",
    "cpu_seconds",
    "gb_seconds",
    "peak_memory_bytes",
    "request_bytes",
    "response_bytes",
    "outbound_calls",
    "outbound_bytes",
    "outbound_bytes_sent",
    "egress_bytes",
    "kv_ops",
    "ai_tokens",
];

pub(crate) fn run(args: UsageArgs, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let by = match args.by {
        By::Minute => "minute",
        By::Hour => "hour",
        By::Day => "day",
    };
    let mut query = format!("by={by}&since={}", encode(&args.since));
    for (name, value) in [
        ("until", &args.until),
        ("tenant", &args.tenant),
        ("app", &args.app),
    ] {
        if let Some(value) = value {
            query.push_str(&format!("&{name}={}", encode(value)));
        }
    }
    let mut out = Printer::new(args.format);
    block_on(async {
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/usage?{query}&cursor={}", encode(c)),
                None => format!("/v1/usage?{query}"),
            };
            let page: UsagePage = client.get_as(&path).await?;
            for row in &page.rows {
                out.row(row, &page.currency).map_err(Failure::runtime)?;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    })?;
    out.finish().map_err(Failure::runtime)
}

/// Writes rows as they come, in the chosen format.
struct Printer {
    format: Format,
    out: std::io::Stdout,
    rows: u64,
    total: Sums,
    currency: String,
}

#[derive(Default)]
struct Sums {
    requests: u64,
    rejected: u64,
    cpu: f64,
    gb_seconds: f64,
    egress: u64,
    cost: f64,
}

/// The cells of a row in the order of [`CSV_FIELDS`].
fn csv_cells(r: &UsageRow) -> Vec<String> {
    let mut cells = vec![r.start.clone(), r.tenant.clone(), r.app.clone()];
    cells.extend(
        [
            r.requests,
            r.invocations,
            r.rejected_quota,
            r.rejected_limit,
            r.status_2xx,
            r.status_3xx,
            r.status_4xx,
            r.status_5xx,
            r.cold_starts,
        ]
        .map(|n| n.to_string()),
    );
    // Numbers as JSON writes them (`0.0`, `1e-7`), as the CSV always had.
    let float = |f: f64| serde_json::Value::from(f).to_string();
    cells.push(float(r.wall_seconds));
    cells.push(r.billed_ms.to_string());
    cells.push(float(r.cpu_seconds));
    cells.push(float(r.gb_seconds));
    cells.extend(
        [
            r.peak_memory_bytes,
            r.request_bytes,
            r.response_bytes,
            r.outbound_calls,
            r.outbound_bytes,
            r.outbound_bytes_sent,
            r.egress_bytes,
            r.kv_ops,
            r.ai_tokens,
        ]
        .map(|n| n.to_string()),
    );
    cells
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

const TABLE_HEADER: &str = "START                 TENANT           APP              REQUESTS   REJECTED    CPU-SEC       GB-SEC      EGRESS         COST";

impl Printer {
    fn new(format: Format) -> Self {
        Self {
            format,
            out: std::io::stdout(),
            rows: 0,
            total: Sums::default(),
            currency: String::new(),
        }
    }

    fn row(&mut self, row: &UsageRow, currency: &str) -> std::io::Result<()> {
        let mut out = self.out.lock();
        let first = self.rows == 0;
        self.rows += 1;
        self.currency = currency.to_string();
        match self.format {
            Format::Json => {
                write!(out, "{}", if first { "[\n  " } else { ",\n  " })?;
                write!(out, "{}", serde_json::to_string(row).unwrap_or_default())?;
            }
            Format::Csv => {
                if first {
                    writeln!(out, "{},cost,currency", CSV_FIELDS.join(","))?;
                }
                let fields: Vec<String> = csv_cells(row).iter().map(|f| csv_field(f)).collect();
                writeln!(
                    out,
                    "{},{},{}",
                    fields.join(","),
                    serde_json::Value::from(row.cost.total),
                    csv_field(currency)
                )?;
            }
            Format::Table => {
                if first {
                    writeln!(out, "{TABLE_HEADER}")?;
                }
                let rejected = row.rejected_quota + row.rejected_limit;
                let cost = row.cost.total;
                let t = &mut self.total;
                t.requests += row.requests;
                t.rejected += rejected;
                t.cpu += row.cpu_seconds;
                t.gb_seconds += row.gb_seconds;
                t.egress += row.egress_bytes;
                t.cost += cost;
                writeln!(
                    out,
                    "{:<21} {:<16} {:<16} {:>8} {:>10} {:>10.3} {:>12.3} {:>11} {:>12.6}",
                    row.start,
                    row.tenant,
                    row.app,
                    row.requests,
                    rejected,
                    row.cpu_seconds,
                    row.gb_seconds,
                    bytesize::ByteSize(row.egress_bytes)
                        .display()
                        .si()
                        .to_string(),
                    cost,
                )?;
            }
        }
        Ok(())
    }

    fn finish(self) -> std::io::Result<()> {
        let mut out = self.out.lock();
        match self.format {
            Format::Json if self.rows == 0 => writeln!(out, "[]")?,
            Format::Json => writeln!(out, "\n]")?,
            Format::Csv if self.rows == 0 => {
                writeln!(out, "{},cost,currency", CSV_FIELDS.join(","))?
            }
            Format::Csv => {}
            Format::Table if self.rows == 0 => {
                writeln!(out, "No usage in this range.")?;
            }
            Format::Table => {
                let t = &self.total;
                writeln!(
                    out,
                    "{:<21} {:<16} {:<16} {:>8} {:>10} {:>10.3} {:>12.3} {:>11} {:>12.6} {}",
                    "TOTAL",
                    "",
                    "",
                    t.requests,
                    t.rejected,
                    t.cpu,
                    t.gb_seconds,
                    bytesize::ByteSize(t.egress).display().si().to_string(),
                    t.cost,
                    self.currency,
                )?;
            }
        }
        out.flush()
    }
}
