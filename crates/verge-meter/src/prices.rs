//! The price sheet: what a unit of usage costs.
//!
//! Billing follows the public models: requests per million (every
//! invocation whose guest ran), CPU-seconds (Workers' CPU time), GB-seconds
//! of memory (Lambda's: peak memory times duration rounded up to the
//! millisecond) and GB of egress (response bytes plus outbound bytes sent).
//! Requests turned away before their guest ran cost nothing.

use crate::aggregate::Totals;

/// Prices per unit, in one currency. Every price defaults to zero.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSheet {
    /// The currency prices are in, e.g. `USD` (a label only).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Price of one million invocations.
    #[serde(default)]
    pub per_million_requests: f64,
    /// Price of one second of guest CPU time.
    #[serde(default)]
    pub per_cpu_second: f64,
    /// Price of one GB-second of memory (GB = 2³⁰ bytes).
    #[serde(default)]
    pub per_gb_second: f64,
    /// Price of one GB of egress: response bytes plus outbound bytes sent
    /// (GB = 2³⁰ bytes).
    #[serde(default)]
    pub per_gb_egress: f64,
}

fn default_currency() -> String {
    "USD".to_string()
}

/// What some usage costs, by component.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Cost {
    /// For invocations.
    pub requests: f64,
    /// For CPU time.
    pub cpu: f64,
    /// For memory over time.
    pub memory: f64,
    /// For egress.
    pub egress: f64,
    /// The sum.
    pub total: f64,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A price that is negative or not a number.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("`{name}` must be a number of zero or more, not {price}")]
pub struct PriceError {
    /// The price's name in the sheet.
    pub name: &'static str,
    /// Its value.
    pub price: f64,
}

impl PriceSheet {
    /// Checks that every price is a finite number, zero or more.
    pub fn validate(&self) -> Result<(), PriceError> {
        for (name, price) in [
            ("per_million_requests", self.per_million_requests),
            ("per_cpu_second", self.per_cpu_second),
            ("per_gb_second", self.per_gb_second),
            ("per_gb_egress", self.per_gb_egress),
        ] {
            if !price.is_finite() || price < 0.0 {
                return Err(PriceError { name, price });
            }
        }
        Ok(())
    }

    /// The cost of `usage`.
    pub fn cost(&self, usage: &Totals) -> Cost {
        let requests = usage.invocations as f64 / 1e6 * self.per_million_requests;
        let cpu = usage.cpu_us as f64 / 1e6 * self.per_cpu_second;
        let memory = gb_seconds(usage) * self.per_gb_second;
        let egress = egress_bytes(usage) as f64 / GIB * self.per_gb_egress;
        Cost {
            requests,
            cpu,
            memory,
            egress,
            total: requests + cpu + memory + egress,
        }
    }
}

/// Memory over time in GB-seconds.
pub fn gb_seconds(usage: &Totals) -> f64 {
    usage.memory_kib_ms as f64 / (1024.0 * 1024.0) / 1000.0
}

/// Bytes that left the node for the app: responses and outbound requests.
pub fn egress_bytes(usage: &Totals) -> u64 {
    usage
        .response_bytes
        .saturating_add(usage.outbound_bytes_sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_follows_the_sheet() {
        let sheet = PriceSheet {
            currency: "USD".into(),
            per_million_requests: 0.5,
            per_cpu_second: 2.0,
            per_gb_second: 10.0,
            per_gb_egress: 0.1,
        };
        let usage = Totals {
            requests: 3_000_000,
            invocations: 2_000_000,
            cpu_us: 1_500_000,
            // 1 GiB for 1.5 s.
            memory_kib_ms: 1024 * 1024 * 1500,
            response_bytes: 1 << 30,
            outbound_bytes: 3 << 30,
            // Only what was sent is egress.
            outbound_bytes_sent: 1 << 30,
            ..Totals::default()
        };
        let cost = sheet.cost(&usage);
        assert_eq!(cost.requests, 1.0, "rejected requests are free");
        assert_eq!(cost.cpu, 3.0);
        assert_eq!(cost.memory, 15.0);
        assert!((cost.egress - 0.2).abs() < 1e-12);
        assert!((cost.total - 19.2).abs() < 1e-9);
        assert!(sheet.validate().is_ok());
        let bad = PriceSheet {
            per_cpu_second: -1.0,
            ..sheet
        };
        assert!(bad.validate().is_err());
    }
}
