//! Table-driven tests of pattern parsing and matching.

use super::*;

fn pattern(s: &str) -> HostPattern {
    s.parse()
        .unwrap_or_else(|e| panic!("{s} should parse: {e}"))
}

#[test]
fn matching_table() {
    // (pattern, scheme, host, port, allowed)
    let cases: &[(&str, &str, &str, Option<u16>, bool)] = &[
        ("api.example.com", "https", "api.example.com", None, true),
        ("api.example.com", "http", "api.example.com", None, true),
        ("api.example.com", "http", "api.example.com", Some(80), true),
        (
            "api.example.com",
            "http",
            "api.example.com",
            Some(8080),
            false,
        ),
        ("api.example.com", "https", "API.Example.COM", None, true),
        ("api.example.com", "https", "evil.example.com", None, false),
        (
            "api.example.com",
            "https",
            "api.example.com.evil.org",
            None,
            false,
        ),
        (
            "https://api.example.com",
            "http",
            "api.example.com",
            None,
            false,
        ),
        (
            "https://api.example.com",
            "https",
            "api.example.com",
            Some(443),
            true,
        ),
        ("127.0.0.1:8080", "http", "127.0.0.1", Some(8080), true),
        ("127.0.0.1:8080", "http", "127.0.0.1", Some(8081), false),
        ("127.0.0.1:*", "http", "127.0.0.1", Some(1), true),
        ("*.example.com", "https", "a.b.example.com", None, true),
        ("*.example.com", "https", "example.com", None, false),
        ("*.example.com", "https", "badexample.com", None, false),
        ("*", "https", "anything.org", None, true),
        ("*:*", "http", "anything.org", Some(9), true),
        ("[::1]:8080", "http", "[::1]", Some(8080), true),
        ("[::1]:8080", "http", "::1", Some(8080), true),
        ("api.example.com", "ftp", "api.example.com", None, false),
    ];
    for (p, scheme, host, port, want) in cases {
        assert_eq!(
            pattern(p).allows(scheme, host, *port),
            *want,
            "{p} vs {scheme}://{host}:{port:?}"
        );
    }
}

#[test]
fn malformed_patterns_are_refused_with_a_reason() {
    for bad in [
        "",
        "ftp://x.org",
        "http://x.org/path",
        "x.org:0",
        "x.org:99999",
        "x.org:abc",
        "bad host",
        "-x.org",
        "*.",
        "[::1",
        "a::b",
    ] {
        let err = bad.parse::<HostPattern>().expect_err(bad);
        assert!(err.to_string().contains("invalid outbound host"), "{err}");
    }
}

#[test]
fn empty_policy_denies_everything() {
    let policy = OutboundPolicy::default();
    assert!(policy.is_empty());
    assert!(!policy.allows("https", "example.com", None));
}

#[test]
fn patterns_naming_internal_networks() {
    for (pattern, internal) in [
        ("*", true),
        ("*:*", true),
        ("localhost:8080", true),
        ("http://127.0.0.1:8080", true),
        ("10.1.2.3", true),
        ("192.168.0.1", true),
        ("169.254.169.254", true),
        ("100.64.0.1", true),
        ("[::1]", true),
        ("[fd00::1]", true),
        ("[::ffff:127.0.0.1]", true),
        ("api.example.com", false),
        ("*.example.com", false),
        ("8.8.8.8", false),
    ] {
        let p: HostPattern = pattern.parse().expect(pattern);
        assert_eq!(p.names_internal(), internal, "{pattern}");
    }
}
