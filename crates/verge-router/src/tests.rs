//! Routing table behaviour, table-driven.

use super::*;

fn table(routes: &[(Option<&str>, &str)]) -> RouteTable<usize> {
    RouteTable::new(
        routes
            .iter()
            .enumerate()
            .map(|(i, (h, p))| (Route::new(*h, p).expect("valid route"), i)),
    )
    .expect("no conflict")
}

#[test]
fn lookup_table() {
    let t = table(&[
        (None, "/"),
        (None, "/api"),
        (None, "/api/v2"),
        (Some("admin.example.com"), "/"),
        (Some("*.example.com"), "/"),
        (Some("*.eu.example.com"), "/"),
        (Some("api.example.com"), "/special"),
    ]);
    // (host, path, expected target)
    let cases: &[(Option<&str>, &str, usize)] = &[
        (None, "/", 0),
        (None, "/anything", 0),
        (None, "/api", 1),
        (None, "/api/", 1),
        (None, "/api/users", 1),
        (None, "/apix", 0),
        (None, "/api?x=1", 1),
        (None, "/api/v2/items", 2),
        (None, "/api/v20", 1),
        (Some("localhost:3000"), "/api", 1),
        (Some("admin.example.com"), "/api", 3),
        (Some("ADMIN.example.com:8443"), "/", 3),
        (Some("shop.example.com"), "/", 4),
        (Some("a.eu.example.com"), "/", 5),
        (Some("example.com"), "/api", 1),
        (Some("api.example.com"), "/special/x", 6),
        // An exact host without a matching prefix falls back to wildcards, then host-less.
        (Some("api.example.com"), "/other", 4),
    ];
    for (host, path, want) in cases {
        let got = t.lookup(*host, path).map(|(_, t)| *t);
        assert_eq!(got, Some(*want), "{host:?} {path}");
    }
}

#[test]
fn no_route_means_none() {
    let t = table(&[(None, "/api")]);
    assert!(t.lookup(None, "/").is_none());
    assert!(t.lookup(Some("x.org"), "/apis").is_none());
}

#[test]
fn trailing_slashes_are_normalised_and_conflict() {
    let err = RouteTable::new([
        (Route::new(None, "/api").expect("valid"), 0),
        (Route::new(None, "/api/").expect("valid"), 1),
    ])
    .expect_err("same route twice");
    assert_eq!(
        err.to_string(),
        "route `/api` is claimed twice (by entries 0 and 1)"
    );
}

#[test]
fn same_prefix_on_different_hosts_is_no_conflict() {
    table(&[(None, "/"), (Some("a.org"), "/"), (Some("b.org"), "/")]);
}

#[test]
fn invalid_routes() {
    for path in ["api", "/a?b", "/a#b", "/a/../b", "/a//b", "/a b"] {
        assert!(
            matches!(Route::new(None, path), Err(RouteError::InvalidPath { .. })),
            "{path}"
        );
    }
    for host in ["", "a b", "*.", "exa mple.com"] {
        assert!(
            matches!(
                Route::new(Some(host), "/"),
                Err(RouteError::InvalidHost { .. })
            ),
            "{host}"
        );
    }
}

#[test]
fn overlapping_routes() {
    let r = |host: Option<&str>, path: &str| Route::new(host, path).expect("route");
    let cases = [
        (r(None, "/"), r(None, "/api"), true),
        (r(None, "/api"), r(None, "/api/v1"), true),
        (r(None, "/api"), r(None, "/apix"), false),
        (r(None, "/a"), r(None, "/b"), false),
        (r(Some("a.example.com"), "/"), r(None, "/x"), true),
        (
            r(Some("a.example.com"), "/"),
            r(Some("b.example.com"), "/"),
            false,
        ),
        (
            r(Some("*.example.com"), "/"),
            r(Some("a.example.com"), "/x"),
            true,
        ),
        (
            r(Some("*.example.com"), "/"),
            r(Some("*.a.example.com"), "/"),
            true,
        ),
        (
            r(Some("*.example.com"), "/"),
            r(Some("example.org"), "/"),
            false,
        ),
    ];
    for (a, b, expected) in cases {
        assert_eq!(a.overlaps(&b), expected, "{a} vs {b}");
        assert_eq!(b.overlaps(&a), expected, "{b} vs {a}");
    }
}
