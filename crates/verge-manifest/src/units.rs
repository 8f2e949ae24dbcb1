//! Human units in the manifest and on the command line: sizes (`128MiB`,
//! `10MB`, or a plain number of bytes) and durations (`30s`, `500ms`, `2m`).

use std::time::Duration;

/// Text that is not a size or a duration; the message says how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnitError {
    /// No text at all.
    #[error("empty size; write e.g. \"128MiB\"")]
    EmptySize,
    /// Not a size.
    #[error("`{0}` is not a size; write e.g. \"128MiB\", \"10MB\" or a number of bytes")]
    NotASize(String),
    /// A number without its unit, where one is required.
    #[error("`{0}` has no unit; write e.g. \"{0}s\" or \"{0}ms\"")]
    NoUnit(String),
    /// Not a duration.
    #[error("`{0}` is not a duration; write e.g. \"30s\", \"500ms\" or \"2m\"")]
    NotADuration(String),
}

/// Parses a size such as `128MiB`, `64KB` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::EmptySize);
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    text.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| UnitError::NotASize(text.to_string()))
}

/// Parses a duration such as `30s`, `500ms` or `2m`. A unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    if text.parse::<f64>().is_ok() {
        return Err(UnitError::NoUnit(text.to_string()));
    }
    humantime::parse_duration(text).map_err(|_| UnitError::NotADuration(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128MiB"), Ok(128 * 1024 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("30").expect_err("no unit").to_string(),
            "`30` has no unit; write e.g. \"30s\" or \"30ms\""
        );
        assert!(parse_duration("soon").is_err());
    }
}
