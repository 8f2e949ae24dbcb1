//! The server's configuration file (`verge server --config FILE`): the
//! price sheet and the quotas, in TOML.
//!
//! ```toml
//! [prices]
//! currency = "USD"
//! per_million_requests = 0.30
//! per_cpu_second = 0.00002
//! per_gb_second = 0.0000166667
//! per_gb_egress = 0.09
//!
//! [quotas.default.tenant]
//! requests_per_minute = 60000
//!
//! [quotas.tenants.acme]
//! cpu_seconds_per_day = 3600
//!
//! [quotas.apps."acme/shop"]
//! requests_per_minute = 600
//! ```
//!
//! **Invariant**: an unknown field or a bad value stops the server before
//! it binds a port, with the file, line and column.

use std::path::Path;

use anyhow::anyhow;
use verge_guard::quota::QuotaConfig;
use verge_manifest::ManifestError;
use verge_meter::PriceSheet;

use crate::Failure;

/// The file's content.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    /// What usage costs.
    #[serde(default)]
    pub(crate) prices: PriceSheet,
    /// Limits per tenant and app.
    #[serde(default)]
    pub(crate) quotas: QuotaConfig,
}

/// Reads and checks the configuration file at `path`.
pub(crate) fn load(path: &Path) -> Result<ServerFile, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::input(anyhow!(
            "cannot read server configuration {}: {e}",
            path.display()
        ))
    })?;
    parse(path, &text).map_err(Failure::input)
}

fn parse(path: &Path, text: &str) -> Result<ServerFile, anyhow::Error> {
    let file: ServerFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        anyhow!(ManifestError::at(
            path,
            text,
            span,
            e.message().to_string(),
            None
        ))
    })?;
    file.prices.validate().map_err(|message| {
        let span = text.find("[prices]").map_or(0..0, |i| i..i + 8);
        anyhow!(ManifestError::at(
            path,
            text,
            span,
            message.to_string(),
            None
        ))
    })?;
    let q = &file.quotas;
    let all_limits = [&q.default.tenant, &q.default.app]
        .into_iter()
        .chain(q.tenants.values())
        .chain(q.apps.values());
    for limits in all_limits {
        if limits
            .cpu_seconds_per_day
            .is_some_and(|s| s > verge_guard::quota::MAX_CPU_SECONDS_PER_DAY)
        {
            let span = text.find("cpu_seconds_per_day").map_or(0..0, |i| i..i + 19);
            return Err(anyhow!(ManifestError::at(
                path,
                text,
                span,
                format!(
                    "`cpu_seconds_per_day` can be at most {}",
                    verge_guard::quota::MAX_CPU_SECONDS_PER_DAY
                ),
                Some("leave it out for no limit".to_string()),
            )));
        }
    }
    for key in file.quotas.apps.keys() {
        if key.split('/').count() != 2 || key.starts_with('/') || key.ends_with('/') {
            let span = text.find(key.as_str()).map_or(0..0, |i| i..i + key.len());
            return Err(anyhow!(ManifestError::at(
                path,
                text,
                span,
                format!("app quota key `{key}` must be TENANT/APP"),
                Some("write it quoted: [quotas.apps.\"acme/shop\"]".to_string()),
            )));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<ServerFile, String> {
        parse(Path::new("server.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses() {
        let file = check(
            "[prices]\nper_million_requests = 0.3\nper_cpu_second = 0.00002\n\n\
             [quotas.default.app]\nrequests_per_minute = 100\n\
             [quotas.tenants.acme]\ncpu_seconds_per_day = 60\n\
             [quotas.apps.\"acme/shop\"]\nrequests_per_minute = 5\n",
        )
        .expect("valid");
        assert_eq!(file.prices.per_million_requests, 0.3);
        assert_eq!(file.prices.currency, "USD");
        assert_eq!(file.quotas.default.app.requests_per_minute, Some(100));
        assert_eq!(file.quotas.tenants["acme"].cpu_seconds_per_day, Some(60));
        assert_eq!(file.quotas.apps["acme/shop"].requests_per_minute, Some(5));
    }

    #[test]
    fn bad_files_name_the_line_and_column() {
        let unknown = check("[prices]\nper_million_requests = 1\nper_request = 2\n")
            .expect_err("unknown field");
        assert!(unknown.contains("unknown field `per_request`"), "{unknown}");
        assert!(unknown.contains("server.toml:3:1"), "{unknown}");
        let negative = check("\n[prices]\nper_cpu_second = -1.0\n").expect_err("negative");
        assert!(negative.contains("per_cpu_second"), "{negative}");
        assert!(negative.contains("server.toml:2:1"), "{negative}");
        let bad_key = check("[quotas.apps.shop]\nrequests_per_minute = 1\n").expect_err("bad key");
        assert!(bad_key.contains("TENANT/APP"), "{bad_key}");
        let bad_type = check("[quotas.default.tenant]\nrequests_per_minute = \"many\"\n")
            .expect_err("bad type");
        assert!(bad_type.contains("server.toml:2:23"), "{bad_type}");
    }
}
