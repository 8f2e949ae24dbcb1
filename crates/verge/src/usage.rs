//! `verge usage`: metered usage and its cost, per app and time bucket.
//!
//! Pages are fetched one at a time and printed as they arrive, so a query
//! over a long range never holds more than one page.

use std::io::Write;

use serde_json::Value;

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
            let page = client.get(&path).await?;
            let currency = page["currency"].as_str().unwrap_or("").to_string();
            for row in page["rows"].as_array().into_iter().flatten() {
                out.row(row, &currency).map_err(Failure::runtime)?;
            }
            match page["next"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
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

fn num(row: &Value, field: &str) -> u64 {
    row[field].as_u64().unwrap_or(0)
}

fn float(row: &Value, field: &str) -> f64 {
    row[field].as_f64().unwrap_or(0.0)
}

fn csv_field(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
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

    fn row(&mut self, row: &Value, currency: &str) -> std::io::Result<()> {
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
                let fields: Vec<String> = CSV_FIELDS.iter().map(|f| csv_field(&row[*f])).collect();
                writeln!(
                    out,
                    "{},{},{}",
                    fields.join(","),
                    float(&row["cost"], "total"),
                    csv_field(&Value::from(currency))
                )?;
            }
            Format::Table => {
                if first {
                    writeln!(out, "{TABLE_HEADER}")?;
                }
                let rejected = num(row, "rejected_quota") + num(row, "rejected_limit");
                let cost = float(&row["cost"], "total");
                let t = &mut self.total;
                t.requests += num(row, "requests");
                t.rejected += rejected;
                t.cpu += float(row, "cpu_seconds");
                t.gb_seconds += float(row, "gb_seconds");
                t.egress += num(row, "egress_bytes");
                t.cost += cost;
                writeln!(
                    out,
                    "{:<21} {:<16} {:<16} {:>8} {:>10} {:>10.3} {:>12.3} {:>11} {:>12.6}",
                    row["start"].as_str().unwrap_or("-"),
                    row["tenant"].as_str().unwrap_or("-"),
                    row["app"].as_str().unwrap_or("-"),
                    num(row, "requests"),
                    rejected,
                    float(row, "cpu_seconds"),
                    float(row, "gb_seconds"),
                    bytesize::ByteSize(num(row, "egress_bytes"))
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
