//! Outbound HTTP allowlist.
//!
//! A [`HostPattern`] is written `[scheme://]host[:port]`:
//! - `host` is a DNS name, an IPv4 address, a bracketed IPv6 address, `*.suffix`
//!   (any subdomain of `suffix`, not `suffix` itself) or `*` (any host);
//! - without a scheme both `http` and `https` match; without a port only the
//!   scheme's default port (80 or 443) matches; `:*` matches any port.
//!
//! **Invariant**: an empty [`OutboundPolicy`] allows nothing.

use std::fmt;
use std::str::FromStr;

/// One allowed outbound destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    source: String,
    scheme: Option<Scheme>,
    host: HostMatch,
    port: PortMatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// Stored with its leading dot: `*.example.com` keeps `.example.com`.
    Subdomains(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortMatch {
    SchemeDefault,
    Any,
    Exact(u16),
}

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid outbound host `{pattern}`: {reason}")]
pub struct HostPatternError {
    pattern: String,
    reason: &'static str,
}

impl HostPatternError {
    fn new(pattern: &str, reason: &'static str) -> Self {
        Self {
            pattern: pattern.to_string(),
            reason,
        }
    }
}

impl FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        let err = |reason| HostPatternError::new(source, reason);
        let lower = source.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return Err(err("it is empty; write a host such as `api.example.com`"));
        }
        let (scheme, rest) = match lower.split_once("://") {
            Some(("http", rest)) => (Some(Scheme::Http), rest),
            Some(("https", rest)) => (Some(Scheme::Https), rest),
            Some(_) => return Err(err("only `http://` and `https://` schemes are supported")),
            None => (None, lower.as_str()),
        };
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(err("name a host (and port), not a URL with a path"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err("malformed port"))?;
        let port = match port {
            None => PortMatch::SchemeDefault,
            Some("*") => PortMatch::Any,
            Some(p) => PortMatch::Exact(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("the port must be a number from 1 to 65535 or `*`"))?,
            ),
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_dns_name(suffix).map_err(err)?;
            HostMatch::Subdomains(format!(".{suffix}"))
        } else if host.starts_with('[') {
            let inner = host.trim_start_matches('[').trim_end_matches(']');
            inner
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| err("malformed IPv6 address"))?;
            HostMatch::Exact(inner.to_string())
        } else {
            check_dns_name(host).map_err(err)?;
            HostMatch::Exact(host.to_string())
        };
        Ok(Self {
            source: source.trim().to_string(),
            scheme,
            host,
            port,
        })
    }
}

/// Splits `host[:port]`, keeping IPv6 brackets on the host.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => rest.strip_prefix(':').map(|p| (host, Some(p))),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

fn check_dns_name(name: &str) -> Result<(), &'static str> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err("the host must be a DNS name, an IP address, `*.domain` or `*`")
    }
}

impl HostPattern {
    /// Whether the pattern names the machine's own or a private network
    /// directly: any host, `localhost`, or a loopback, private, link-local,
    /// shared or unspecified address. (A DNS name can still resolve to
    /// such an address; this looks at the pattern only.)
    pub fn names_internal(&self) -> bool {
        let host = match &self.host {
            HostMatch::Any => return true,
            HostMatch::Exact(h) => h.as_str(),
            HostMatch::Subdomains(suffix) => suffix.trim_start_matches('.'),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                let [a, b, ..] = ip.octets();
                ip.is_loopback()
                    || ip.is_private()
                    || ip.is_link_local()
                    || ip.is_unspecified()
                    || ip.is_broadcast()
                    || (a == 100 && (64..128).contains(&b))
            }
            Ok(std::net::IpAddr::V6(ip)) => {
                let first = ip.segments()[0];
                ip.is_loopback()
                    || ip.is_unspecified()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
                    || ip.to_ipv4_mapped().is_some()
            }
            Err(_) => false,
        }
    }

    /// Whether a request to `scheme://host:port` matches this pattern.
    /// `scheme` is `http` or `https`; `port` is `None` for the scheme's default.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return false,
        };
        if self.scheme.is_some_and(|s| s != scheme) {
            return false;
        }
        let port = port.unwrap_or(scheme.default_port());
        let port_ok = match self.port {
            PortMatch::Any => true,
            PortMatch::Exact(p) => p == port,
            PortMatch::SchemeDefault => port == scheme.default_port(),
        };
        if !port_ok {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => *h == host,
            HostMatch::Subdomains(suffix) => host.ends_with(suffix.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The set of outbound destinations one component may call. Empty denies all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    patterns: Vec<HostPattern>,
}

impl OutboundPolicy {
    /// A policy allowing exactly the given patterns.
    pub fn new(patterns: Vec<HostPattern>) -> Self {
        Self { patterns }
    }

    /// Whether any pattern allows `scheme://host:port`.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.patterns.iter().any(|p| p.allows(scheme, host, port))
    }

    /// Whether nothing at all is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The allowed patterns, as written.
    pub fn patterns(&self) -> &[HostPattern] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests;
