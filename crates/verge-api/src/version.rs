//! [`VersionName`]: an app's version as the API writes it, `v3`.
//!
//! **Invariants**
//! - Written `v{number}`, always.
//! - Read from `v3` or `3` (and anything else `u32` parses after an
//!   optional `v`, as the server always accepted); only from a JSON
//!   string, never a number.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// A version of an app: `v3` (read from `v3` or `3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ToSchema)]
#[schema(value_type = String, examples("v3"))]
pub struct VersionName(
    /// The version's sequence number within its app.
    pub u32,
);

impl VersionName {
    /// The version's sequence number within its app.
    pub const fn number(self) -> u32 {
        self.0
    }
}

impl From<u32> for VersionName {
    fn from(number: u32) -> Self {
        Self(number)
    }
}

impl fmt::Display for VersionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Text that is not a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidVersion(
    /// What was given (at most 80 characters of it).
    pub String,
);

impl fmt::Display for InvalidVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a version (write it `v3` or `3`)", self.0)
    }
}

impl std::error::Error for InvalidVersion {}

impl FromStr for VersionName {
    type Err = InvalidVersion;

    fn from_str(s: &str) -> Result<Self, InvalidVersion> {
        s.strip_prefix('v')
            .unwrap_or(s)
            .parse()
            .map(Self)
            .map_err(|_| InvalidVersion(s.chars().take(80).collect()))
    }
}

impl Serialize for VersionName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VersionName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = VersionName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version such as `v3`")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<VersionName, E> {
                s.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}
