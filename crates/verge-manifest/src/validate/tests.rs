//! Data-driven manifest tests: each case is a manifest and the exact
//! diagnostic (or summary) it must produce.

use std::path::Path;

use expect_test::{Expect, expect};

use crate::Manifest;

fn check_err(text: &str, expected: Expect) {
    let err = Manifest::parse(text, Path::new("/app/verge.toml"))
        .expect_err("manifest should be refused");
    expected.assert_eq(&err.to_string());
}

fn summary(text: &str) -> String {
    let m = Manifest::parse(text, Path::new("/app/verge.toml")).expect("manifest should be valid");
    let mut out = format!("app {}\n", m.name);
    for c in &m.components {
        let routes: Vec<String> = c.routes.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "{}: source={} routes={:?} env={:?} outbound={:?} memory={} timeout={:?} concurrency={} body={}\n",
            c.name,
            c.source.display(),
            routes,
            c.capabilities.env,
            c.capabilities.outbound.patterns().iter().map(ToString::to_string).collect::<Vec<_>>(),
            c.limits.memory,
            c.limits.timeout,
            c.limits.max_concurrency,
            c.limits.max_request_body,
        ));
        if let Some(b) = &c.build {
            out.push_str(&format!(
                "  build `{}` in {} watch={:?} timeout={:?}\n",
                b.command,
                b.workdir.display(),
                b.watch,
                b.timeout
            ));
        }
    }
    out
}

#[test]
fn full_manifest() {
    let text = r#"
name = "shop"

[component.web]
source = "web/web.wasm"
routes = ["/"]

[component.api]
source = "../shared/api.wasm"
routes = ["/api/", { path = "/", host = "API.example.com" }]
allowed_outbound_hosts = ["https://payments.example.com", "127.0.0.1:*"]
environment = { LOG = "debug", B = "2" }
build = { command = "make", workdir = "api", watch = ["src/**/*.rs"], timeout = "2m" }
limits = { memory = "64MiB", timeout = "10s", max_concurrency = 5, max_request_body = 1024 }
"#;
    expect![[r#"
        app shop
        web: source=/app/web/web.wasm routes=["/"] env=[] outbound=[] memory=134217728 timeout=30s concurrency=100 body=33554432
        api: source=/shared/api.wasm routes=["/api", "api.example.com/"] env=[("B", "2"), ("LOG", "debug")] outbound=["https://payments.example.com", "127.0.0.1:*"] memory=67108864 timeout=10s concurrency=5 body=1024
          build `make` in /app/api watch=["src/**/*.rs"] timeout=120s
    "#]]
    .assert_eq(&summary(text));
}

#[test]
fn app_name_defaults_to_folder() {
    let text = "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n";
    let m = Manifest::parse(text, Path::new("/work/My App_1/verge.toml")).expect("valid");
    assert_eq!(m.name, "my-app-1");
}

#[test]
fn syntax_error() {
    check_err(
        "name = \"x\"\n[component.a\nsource = 1\n",
        expect![[r#"
            unclosed table, expected `]`
             --> /app/verge.toml:2:13
              |
            2 | [component.a
              |             ^"#]],
    );
}

#[test]
fn unknown_field() {
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nrotes = [\"/\"]\n",
        expect![[r#"
            unknown field `rotes`, expected one of `source`, `routes`, `build`, `environment`, `allowed_outbound_hosts`, `limits`, `key_value_stores`, `variables`, `secrets`, `ai_models`, `vector_indexes`, `classifiers`
             --> /app/verge.toml:3:1
              |
            3 | rotes = ["/"]
              | ^^^^^
              = help: remove the field or fix its spelling; docs/manifest.md lists every field"#]],
    );
}

#[test]
fn missing_source() {
    check_err(
        "[component.a]\nroutes = [\"/\"]\n",
        expect![[r#"
            missing field `source`
             --> /app/verge.toml:1:1
              |
            1 | [component.a]
              | ^^^^^^^^^^^^^
              = help: add the field; docs/manifest.md describes it"#]],
    );
}

#[test]
fn bad_duration() {
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nlimits = { timeout = \"30\" }\n",
        expect![[r#"
            component `a`: invalid `timeout`: `30` has no unit; write e.g. "30s" or "30ms"
             --> /app/verge.toml:4:22
              |
            4 | limits = { timeout = "30" }
              |                      ^^^^"#]],
    );
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nlimits = { timeout = \"soon\" }\n",
        expect![[r#"
            component `a`: invalid `timeout`: `soon` is not a duration; write e.g. "30s", "500ms" or "2m"
             --> /app/verge.toml:4:22
              |
            4 | limits = { timeout = "soon" }
              |                      ^^^^^^"#]],
    );
}

#[test]
fn build_timeout_range() {
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nbuild = { command = \"make\", timeout = \"400d\" }\n",
        expect![[r#"
            component `a`: build timeout must be above zero and at most 24h
             --> /app/verge.toml:4:39
              |
            4 | build = { command = "make", timeout = "400d" }
              |                                       ^^^^^^"#]],
    );
}

#[test]
fn bad_sizes_and_ranges() {
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n[component.a.limits]\nmemory = \"8GiB\"\n",
        expect![[r#"
            component `a`: `memory` must be between 64KiB and 4GiB, not 8589934592 bytes
             --> /app/verge.toml:5:10
              |
            5 | memory = "8GiB"
              |          ^^^^^^"#]],
    );
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n[component.a.limits]\nmax_concurrency = 0\n",
        expect![[r#"
            component `a`: `max_concurrency` must be between 1 and 10000, not 0
             --> /app/verge.toml:5:19
              |
            5 | max_concurrency = 0
              |                   ^"#]],
    );
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n[component.a.limits]\nmax_request_body = \"huge\"\n",
        expect![[r#"
            component `a`: invalid `max_request_body`: `huge` is not a size; write e.g. "128MiB", "10MB" or a number of bytes
             --> /app/verge.toml:5:20
              |
            5 | max_request_body = "huge"
              |                    ^^^^^^"#]],
    );
}

#[test]
fn route_conflict_between_components() {
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/api\"]\n\n[component.b]\nsource = \"b.wasm\"\nroutes = [\"/\", \"/api/\"]\n",
        expect![[r#"
            route `/api` is already served by component `a`
             --> /app/verge.toml:7:16
              |
            7 | routes = ["/", "/api/"]
              |                ^^^^^^^
              = help: each host and path prefix may be served by one component only; change one of the routes"#]],
    );
}

#[test]
fn invalid_route_and_host() {
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"api\"]\n",
        expect![[r#"
            component `a`: invalid route path `api`: it must start with `/`
             --> /app/verge.toml:3:11
              |
            3 | routes = ["api"]
              |           ^^^^^"#]],
    );
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [{ path = \"/\", hots = \"x\" }]\n",
        expect![[r#"
            unknown field `hots`, expected `path` or `host`
             --> /app/verge.toml:3:25
              |
            3 | routes = [{ path = "/", hots = "x" }]
              |                         ^^^^
              = help: remove the field or fix its spelling; docs/manifest.md lists every field"#]],
    );
}

#[test]
fn bad_outbound_host() {
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nallowed_outbound_hosts = [\"http://x.org/path\"]\n",
        expect![[r#"
            component `a`: invalid outbound host `http://x.org/path`: name a host (and port), not a URL with a path
             --> /app/verge.toml:4:27
              |
            4 | allowed_outbound_hosts = ["http://x.org/path"]
              |                           ^^^^^^^^^^^^^^^^^^^
              = help: write `[scheme://]host[:port]`, e.g. "https://api.example.com" or "127.0.0.1:8080""#]],
    );
}

#[test]
fn names_and_empty_manifest() {
    check_err(
        "",
        expect![[r#"
            the manifest declares no component
             --> /app/verge.toml:1:1
              |
            1 | 
              | ^
              = help: add a `[component.NAME]` table with `source` and `routes`"#]],
    );
    check_err(
        "name = \"My App\"\n",
        expect![[r#"
            invalid app name `My App`: use 1 to 63 lower-case letters, digits and `-`, not starting or ending with `-`
             --> /app/verge.toml:1:8
              |
            1 | name = "My App"
              |        ^^^^^^^^"#]],
    );
    check_err(
        "[component.Api]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n",
        expect![[r#"
            invalid component name `Api`: use 1 to 63 lower-case letters, digits and `-`, not starting or ending with `-`
             --> /app/verge.toml:1:12
              |
            1 | [component.Api]
              |            ^^^"#]],
    );
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = []\n",
        expect![[r#"
            component `a`: no routes
             --> /app/verge.toml:1:12
              |
            1 | [component.a]
              |            ^
              = help: add `routes = ["/"]` (path prefixes this component serves)"#]],
    );
}

#[test]
fn environment_names() {
    check_err(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nenvironment = { \"A=B\" = \"x\" }\n",
        expect![[r#"
            component `a`: invalid environment variable name `A=B`
             --> /app/verge.toml:4:17
              |
            4 | environment = { "A=B" = "x" }
              |                 ^^^^^
              = help: names must be non-empty and contain no `=` or NUL"#]],
    );
}

#[test]
fn missing_component_file_is_reported_at_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("verge.toml");
    std::fs::write(
        &path,
        "[component.a]\nsource = \"missing.wasm\"\nroutes = [\"/\"]\n",
    )
    .expect("write");
    let m = Manifest::load(&path).expect("valid manifest");
    let err = m.check_sources().expect_err("file is missing");
    assert_eq!(err.position(), Some((2, 10)));
    let text = err.to_string();
    assert!(text.contains("component `a`: file `"), "{text}");
    assert!(text.contains("missing.wasm` does not exist"), "{text}");
    assert!(text.contains("help: build the component first"), "{text}");
}

#[test]
fn stores_variables_secrets_and_environments() {
    let text = r#"
[variables]
greeting = "hello"
limit = "10"

[environments.staging.variables]
greeting = "hi from staging"

[component.a]
source = "a.wasm"
routes = ["/"]
key_value_stores = ["default", "sessions"]
variables = ["greeting"]
secrets = ["api_key"]
"#;
    let path = Path::new("/app/verge.toml");
    let mut m = Manifest::parse(text, path).expect("valid");
    let caps = &m.components[0].capabilities;
    assert_eq!(caps.key_value_stores, ["default", "sessions"]);
    assert_eq!(
        caps.variables,
        [("greeting".to_string(), "hello".to_string())]
    );
    assert_eq!(caps.secrets, ["api_key"]);
    m.select_environment("staging").expect("staging");
    assert_eq!(
        m.components[0].capabilities.variables,
        [("greeting".to_string(), "hi from staging".to_string())]
    );
    let err = m
        .select_environment("prod")
        .expect_err("unknown environment")
        .to_string();
    assert!(
        err.ends_with("has no environment `prod`; it has: staging"),
        "{err}"
    );
}

#[test]
fn bad_stores_variables_and_secrets() {
    let base = "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n";
    check_err(
        &format!("{base}variables = [\"nope\"]\n"),
        expect![[r#"
            component `a`: variable `nope` is not declared in `[variables]`
             --> /app/verge.toml:4:14
              |
            4 | variables = ["nope"]
              |              ^^^^^^
              = help: add `nope = "..."` to the app's `[variables]` table"#]],
    );
    check_err(
        &format!("[variables]\nkey = \"v\"\n\n{base}variables = [\"key\"]\nsecrets = [\"key\"]\n"),
        expect![[r#"
            component `a`: `key` is listed twice among variables and secrets
             --> /app/verge.toml:8:12
              |
            8 | secrets = ["key"]
              |            ^^^^^
              = help: a guest reads both through wasi:config, so a name can be a variable or a secret, not both"#]],
    );
    check_err(
        &format!("{base}secrets = [\"API-KEY\"]\n"),
        expect![[r#"
            component `a`: invalid secret name `API-KEY`: use 1 to 64 lower-case letters, digits and `_`, starting with a letter
             --> /app/verge.toml:4:12
              |
            4 | secrets = ["API-KEY"]
              |            ^^^^^^^^^"#]],
    );
    check_err(
        &format!("{base}key_value_stores = [\"a/b\"]\n"),
        expect![[r#"
            component `a`: invalid key-value store name `a/b`: use 1 to 63 lower-case letters, digits, `-` and `_`
             --> /app/verge.toml:4:21
              |
            4 | key_value_stores = ["a/b"]
              |                     ^^^^^"#]],
    );
    check_err(
        &format!("[variables]\na = \"1\"\n[environments.prod.variables]\nb = \"2\"\n{base}"),
        expect![[r#"
            environment overrides variable `b`, which `[variables]` does not declare
             --> /app/verge.toml:4:1
              |
            4 | b = "2"
              | ^
              = help: declare it with a default value in `[variables]`, or fix its spelling"#]],
    );
}

#[test]
fn ai_models_and_vector_indexes() {
    let base = "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n";
    let text =
        format!("{base}ai_models = [\"all-minilm-l6-v2\"]\nvector_indexes = [\"docs\", \"faq\"]\n");
    let m = Manifest::parse(&text, Path::new("/app/verge.toml")).expect("valid");
    let caps = &m.components[0].capabilities;
    assert_eq!(caps.ai_models, ["all-minilm-l6-v2"]);
    assert_eq!(caps.vector_indexes, ["docs", "faq"]);
    check_err(
        &format!("{base}ai_models = [\"gpt-99\"]\n"),
        expect![[r#"
            component `a`: unknown AI model `gpt-99`
             --> /app/verge.toml:4:14
              |
            4 | ai_models = ["gpt-99"]
              |              ^^^^^^^^
              = help: known models: all-minilm-l6-v2"#]],
    );
    check_err(
        &format!("{base}ai_models = [\"all-minilm-l6-v2\", \"all-minilm-l6-v2\"]\n"),
        expect![[r#"
            component `a`: model `all-minilm-l6-v2` is listed twice
             --> /app/verge.toml:4:34
              |
            4 | ai_models = ["all-minilm-l6-v2", "all-minilm-l6-v2"]
              |                                  ^^^^^^^^^^^^^^^^^^"#]],
    );
    check_err(
        &format!("{base}vector_indexes = [\"Docs!\"]\n"),
        expect![[r#"
            component `a`: invalid vector index name `Docs!`: use 1 to 63 lower-case letters, digits, `-` and `_`
             --> /app/verge.toml:4:19
              |
            4 | vector_indexes = ["Docs!"]
              |                   ^^^^^^^"#]],
    );
    check_err(
        &format!("{base}classifiers = [\"sentiment\"]\n"),
        expect![[r#"
            component `a`: a classifier needs the model it was trained on
             --> /app/verge.toml:4:16
              |
            4 | classifiers = ["sentiment"]
              |                ^^^^^^^^^^^
              = help: add `ai_models = ["all-minilm-l6-v2"]` to the component"#]],
    );
    check_err(
        &format!("{base}vector_indexes = [\"a\", \"a\"]\n"),
        expect![[r#"
            component `a`: vector index `a` is listed twice
             --> /app/verge.toml:4:24
              |
            4 | vector_indexes = ["a", "a"]
              |                        ^^^"#]],
    );
}

#[test]
fn placement_selects_nodes_by_label() {
    let m = Manifest::parse(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n\n[placement]\nregion = [\"eu-west\", \"us-east\"]\ntier = \"edge\"\nmin_replicas = 2\n",
        Path::new("/app/verge.toml"),
    )
    .expect("valid");
    assert_eq!(m.placement.min_replicas, Some(2));
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert!(m.placement.matches(&labels(&[
        ("region", "us-east"),
        ("tier", "edge"),
        ("zone", "b")
    ])));
    assert!(
        !m.placement.matches(&labels(&[("region", "us-east")])),
        "every selector must hold"
    );
    assert!(
        !m.placement
            .matches(&labels(&[("region", "ap-south"), ("tier", "edge")]))
    );
    let everywhere = Manifest::parse(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n",
        Path::new("/app/verge.toml"),
    )
    .expect("valid");
    assert!(everywhere.placement.matches(&labels(&[])));
}

#[test]
fn placement_errors() {
    let base = "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n\n[placement]\n";
    check_err(
        &format!("{base}region = []\n"),
        expect![[r#"
            label `region` lists no value, so no node could run the app
             --> /app/verge.toml:6:10
              |
            6 | region = []
              |          ^^
              = help: a selector is a node label with the values it may have, e.g. `region = ["eu-west", "us-east"]`"#]],
    );
    check_err(
        &format!("{base}min_replicas = 0\n"),
        expect![[r#"
            `min_replicas` must be a whole number from 1 to 1000
             --> /app/verge.toml:6:16
              |
            6 | min_replicas = 0
              |                ^"#]],
    );
    check_err(
        &format!("{base}region = [\"eu west\"]\n"),
        expect![[r#"
            invalid value `eu west` for label `region`
             --> /app/verge.toml:6:10
              |
            6 | region = ["eu west"]
              |          ^^^^^^^^^^^
              = help: label values are 1-63 letters, digits, `-`, `_` or `.`"#]],
    );
    check_err(
        &format!("{base}region = 3\n"),
        expect![[r#"
            label `region` needs text values
             --> /app/verge.toml:6:10
              |
            6 | region = 3
              |          ^
              = help: a selector is a node label with the values it may have, e.g. `region = ["eu-west", "us-east"]`"#]],
    );
}

#[test]
fn node_labels_parse_and_bad_ones_are_named() {
    let labels = crate::parse_labels("region=eu-west, zone=a").expect("valid");
    assert_eq!(labels["region"], "eu-west");
    assert_eq!(labels["zone"], "a");
    assert!(crate::parse_labels("").expect("empty").is_empty());
    let err = crate::parse_labels("region")
        .expect_err("no value")
        .to_string();
    assert!(err.contains("`region` is not key=value"), "{err}");
    let err = crate::parse_labels("a=1,a=2")
        .expect_err("twice")
        .to_string();
    assert!(err.contains("given twice"), "{err}");
    let err = crate::parse_labels("re gion=x")
        .expect_err("space")
        .to_string();
    assert!(err.contains("letters, digits"), "{err}");
}

#[test]
fn key_value_consistency() {
    let m = Manifest::parse(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nkey_value_stores = [\"carts\", \"sessions\"]\n\n[key_value.sessions]\nconsistency = \"edge-local\"\n\n[key_value.carts]\nconsistency = \"strict\"\n",
        Path::new("/app/verge.toml"),
    )
    .expect("valid");
    assert_eq!(m.components[0].capabilities.edge_local_stores, ["sessions"]);
    let base =
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nkey_value_stores = [\"carts\"]\n\n";
    check_err(
        &format!("{base}[key_value.carts]\nconsistency = \"eventual\"\n"),
        expect![[r#"
            unknown consistency `eventual`
             --> /app/verge.toml:7:15
              |
            7 | consistency = "eventual"
              |               ^^^^^^^^^^
              = help: use "strict" (writes ordered by the cluster, refused without it) or "edge-local" (written locally, last writer wins); see docs/cluster.md"#]],
    );
    check_err(
        &format!("{base}[key_value.other]\nconsistency = \"edge-local\"\n"),
        expect![[r#"
            `[key_value.other]` configures a store no component lists
             --> /app/verge.toml:6:12
              |
            6 | [key_value.other]
              |            ^^^^^
              = help: add it to a component's `key_value_stores`, or remove the table"#]],
    );
}
