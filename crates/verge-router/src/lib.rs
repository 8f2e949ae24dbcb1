//! Maps a request's host and path to the target that serves it.
//!
//! A [`Route`] is a path prefix with an optional host. Matching rules:
//! - a route with a host only matches requests for that host (case-insensitive,
//!   port ignored); `*.example.com` matches any subdomain of `example.com`;
//! - host-specific routes win over host-less ones, exact hosts over wildcards;
//! - among the candidates the longest prefix wins, and a prefix only matches
//!   at a segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
//!
//! **Invariant**: a [`RouteTable`] never holds two routes with the same host and
//! prefix; [`RouteTable::new`] refuses them with a [`RouteError::Conflict`].
//!
//! **API boundary**: no HTTP types and no I/O; the table is built once and
//! swapped whole when the app changes.

use std::collections::HashMap;
use std::fmt;

/// A path prefix, optionally bound to one host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    host: Option<String>,
    prefix: String,
}

/// Why a route or a table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The path prefix is not of the form `/segment/...`.
    #[error("invalid route path `{path}`: {reason}")]
    InvalidPath {
        /// The path as written.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host is not a DNS name or `*.domain`.
    #[error(
        "invalid route host `{host}`: use a DNS name such as `api.example.com` or `*.example.com`"
    )]
    InvalidHost {
        /// The host as written.
        host: String,
    },
    /// Two routes claim the same host and prefix.
    #[error("route `{route}` is claimed twice (by entries {first} and {second})")]
    Conflict {
        /// The contested route.
        route: Route,
        /// Position of the first claimant in the input.
        first: usize,
        /// Position of the second claimant in the input.
        second: usize,
    },
}

impl Route {
    /// Parses a path prefix and an optional host, normalising both:
    /// hosts are lower-cased, trailing slashes are dropped (`/api/` is `/api`).
    pub fn new(host: Option<&str>, path: &str) -> Result<Self, RouteError> {
        let invalid = |reason| RouteError::InvalidPath {
            path: path.to_string(),
            reason,
        };
        if !path.starts_with('/') {
            return Err(invalid("it must start with `/`"));
        }
        if path.contains(['?', '#']) || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "it must be a plain path, without query, fragment or spaces",
            ));
        }
        if path.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(invalid("`.` and `..` segments are not allowed"));
        }
        if path.contains("//") {
            return Err(invalid("empty segments (`//`) are not allowed"));
        }
        let prefix = match path.trim_end_matches('/') {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        let host = match host {
            None => None,
            Some(h) => Some(normalize_host(h).ok_or_else(|| RouteError::InvalidHost {
                host: h.to_string(),
            })?),
        };
        Ok(Self { host, prefix })
    }

    /// The normalised host, if the route is bound to one.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The normalised path prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether some request could match both routes: their hosts can
    /// coincide (a host-less route matches every host) and one prefix
    /// contains the other. Owners of different routes that overlap would
    /// take each other's traffic.
    pub fn overlaps(&self, other: &Route) -> bool {
        let hosts = match (self.host.as_deref(), other.host.as_deref()) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => {
                let covers = |wild: &str, name: &str| {
                    wild.strip_prefix('*')
                        .is_some_and(|suffix| name.ends_with(suffix))
                };
                a == b || covers(a, b) || covers(b, a)
            }
        };
        hosts && (self.matches_path(&other.prefix) || other.matches_path(&self.prefix))
    }

    fn matches_path(&self, path: &str) -> bool {
        if self.prefix == "/" {
            return true;
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
            None => false,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(h) => write!(f, "{h}{}", self.prefix),
            None => f.write_str(&self.prefix),
        }
    }
}

fn normalize_host(host: &str) -> Option<String> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let valid = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(host)
}

/// Strips the port and trailing dot from a `Host` header value and lower-cases it.
fn request_host(host: &str) -> String {
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| &h[1..]).unwrap_or(host)
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// An immutable routing table from [`Route`]s to targets of type `T`.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    /// Exact-host routes by host, each list longest prefix first.
    by_host: HashMap<String, Vec<(Route, T)>>,
    /// Wildcard-host routes, longest host suffix first, then longest prefix.
    wildcard: Vec<(Route, T)>,
    /// Host-less routes, longest prefix first.
    any_host: Vec<(Route, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            by_host: HashMap::new(),
            wildcard: Vec::new(),
            any_host: Vec::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Builds a table, refusing two entries for the same host and prefix.
    pub fn new(entries: impl IntoIterator<Item = (Route, T)>) -> Result<Self, RouteError> {
        let mut seen: HashMap<Route, usize> = HashMap::new();
        let mut table = Self {
            by_host: HashMap::new(),
            wildcard: Vec::new(),
            any_host: Vec::new(),
        };
        for (i, (route, target)) in entries.into_iter().enumerate() {
            if let Some(first) = seen.insert(route.clone(), i) {
                return Err(RouteError::Conflict {
                    route,
                    first,
                    second: i,
                });
            }
            match route.host.clone() {
                None => table.any_host.push((route, target)),
                Some(h) if h.starts_with("*.") => table.wildcard.push((route, target)),
                Some(h) => table.by_host.entry(h).or_default().push((route, target)),
            }
        }
        let by_prefix_len =
            |a: &(Route, T), b: &(Route, T)| b.0.prefix.len().cmp(&a.0.prefix.len());
        table.any_host.sort_by(by_prefix_len);
        for list in table.by_host.values_mut() {
            list.sort_by(by_prefix_len);
        }
        table.wildcard.sort_by(|a, b| {
            let host_len = |r: &Route| r.host.as_ref().map_or(0, String::len);
            host_len(&b.0)
                .cmp(&host_len(&a.0))
                .then(b.0.prefix.len().cmp(&a.0.prefix.len()))
        });
        Ok(table)
    }

    /// The target for a request to `host` (a `Host` header value, port allowed)
    /// and `path`, with its route.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<(&Route, &T)> {
        let found = host.map(request_host).and_then(|host| {
            let exact = self
                .by_host
                .get(&host)
                .and_then(|list| list.iter().find(|(r, _)| r.matches_path(path)));
            exact.or_else(|| {
                self.wildcard.iter().find(|(r, _)| {
                    r.host
                        .as_deref()
                        .and_then(|h| h.strip_prefix('*'))
                        .is_some_and(|suffix| host.ends_with(suffix))
                        && r.matches_path(path)
                })
            })
        });
        found
            .or_else(|| self.any_host.iter().find(|(r, _)| r.matches_path(path)))
            .map(|(r, t)| (r, t))
    }

    /// Every route in the table with its target, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Route, &T)> {
        self.by_host
            .values()
            .flatten()
            .chain(&self.wildcard)
            .chain(&self.any_host)
            .map(|(r, t)| (r, t))
    }
}

#[cfg(test)]
mod tests;
