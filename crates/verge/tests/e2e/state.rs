//! State and configuration for guests on `verge up`: `wasi:keyvalue`
//! (durable, quota-bound, deny-by-default), `wasi:config` variables with
//! environments, secrets from the environment, and `wasi:logging`.

use bytes::Bytes;

use crate::support::*;

fn manifest(extra: &str) -> String {
    format!(
        r#"
[variables]
greeting = "hello"
colour = "blue"

[environments.staging.variables]
greeting = "hello from staging"

[component.state]
source = {state}
routes = ["/"]
key_value_stores = ["default", "sessions"]
variables = ["greeting"]
secrets = ["api_key"]
{extra}
"#,
        state = toml_path(&guests().state),
    )
}

async fn put(addr: std::net::SocketAddr, path: &str, body: impl Into<Bytes>) -> Response {
    let response = send(addr, request("PUT", addr, path, full(body.into())))
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    buffer(response).await.expect("body")
}

fn kv(op: &str, store: &str, key: &str) -> String {
    format!("/{op}?store={store}&key={}", encode(key))
}

#[tokio::test]
async fn key_value_operations_limits_and_undeclared_stores() {
    let dir = app_dir(&manifest(""));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let addr = verge.addr;

    // A store the component did not declare is denied inside the guest.
    let r = get(addr, "/kv-open?store=other&repeat=1000").await;
    assert_eq!((r.status, r.text().as_str()), (500, "access-denied"));
    verge.wait_for_log("key-value store denied: not in key_value_stores");
    // A guest retrying in a loop is logged once per request, not 1,000 times.
    let id = r.header("x-request-id").expect("id").to_string();
    get(addr, "/").await;
    let denials = verge
        .log()
        .lines()
        .filter(|l| l.contains("key-value store denied") && l.contains(&id))
        .count();
    assert_eq!(denials, 1);
    assert_eq!(get(addr, "/kv-open?store=sessions").await.text(), "ok");

    // Values are bytes, NUL included; keys are any UTF-8.
    let key = "ünïcode/key with spaces&=?";
    let value = Bytes::from_static(b"a\0b\xff\xfe");
    assert_eq!(
        put(addr, &kv("kv-set", "default", key), value.clone())
            .await
            .status,
        204
    );
    let r = get(addr, &kv("kv-get", "default", key)).await;
    assert_eq!((r.status, r.body.clone()), (200, value));
    assert_eq!(
        get(addr, &kv("kv-exists", "default", key)).await.text(),
        "true"
    );
    // Stores are separate namespaces.
    assert_eq!(get(addr, &kv("kv-get", "sessions", key)).await.status, 404);
    assert_eq!(
        put(addr, &kv("kv-delete", "default", key), "").await.status,
        204
    );
    assert_eq!(get(addr, &kv("kv-get", "default", key)).await.status, 404);

    // Keys: 1024 bytes fit, 1025 and empty do not.
    let long = "k".repeat(1024);
    assert_eq!(
        put(addr, &kv("kv-set", "default", &long), "v").await.status,
        204
    );
    let r = put(addr, &kv("kv-set", "default", &"k".repeat(1025)), "v").await;
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("longer than the limit of 1024 bytes"),
        "{}",
        r.text()
    );
    let r = put(addr, &kv("kv-set", "default", ""), "v").await;
    assert_eq!(r.text(), "other: invalid key: keys cannot be empty");

    // Values: 1 MiB fits, one byte more is over the quota and changes nothing.
    let mib = pseudo_random(1024 * 1024, 7);
    assert_eq!(
        put(addr, &kv("kv-set", "default", "big"), mib.clone())
            .await
            .status,
        204
    );
    let r = put(
        addr,
        &kv("kv-set", "default", "big"),
        vec![0u8; 1024 * 1024 + 1],
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(
        r.text()
            .starts_with("other: quota exceeded: a value of 1048577 bytes"),
        "{}",
        r.text()
    );
    assert_eq!(
        get(addr, &kv("kv-get", "default", "big")).await.body,
        Bytes::from(mib)
    );

    // Counters.
    assert_eq!(
        get(addr, "/kv-incr?store=default&key=n&delta=5")
            .await
            .text(),
        "5"
    );
    assert_eq!(
        get(addr, "/kv-incr?store=default&key=n&delta=2")
            .await
            .text(),
        "7"
    );
    let r = get(addr, "/kv-incr?store=default&key=big").await;
    assert!(
        r.text().contains("is not a decimal unsigned integer"),
        "{}",
        r.text()
    );

    // Batches and listing with a cursor.
    let r = get(addr, "/kv-set-many?store=sessions&prefix=s&n=1500&size=3").await;
    assert_eq!(r.status, 500, "over the batch limit");
    assert!(r.text().contains("limit of 1000"), "{}", r.text());
    assert_eq!(
        get(addr, "/kv-set-many?store=sessions&prefix=s&n=1000&size=3")
            .await
            .status,
        204
    );
    assert_eq!(
        get(addr, "/kv-get-many?store=sessions&keys=s1,nope,s999")
            .await
            .text(),
        "s1=xxx\nnope missing\ns999=xxx\n"
    );
    assert_eq!(
        put(addr, &kv("kv-set", "sessions", "one-more"), "")
            .await
            .status,
        204
    );
    let page = get(addr, "/kv-list?store=sessions").await.text();
    let lines: Vec<&str> = page.lines().collect();
    assert_eq!(lines.len(), 1001, "a full page and its cursor");
    let cursor = lines[1000].strip_prefix("cursor: ").expect("cursor line");
    assert_ne!(cursor, "none");
    assert_eq!(
        get(addr, &format!("/kv-list?store=sessions&cursor={cursor}"))
            .await
            .text(),
        "one-more\ncursor: none\n"
    );
    assert_eq!(
        get(addr, "/kv-delete-many?store=sessions&keys=s1,s2")
            .await
            .status,
        204
    );
    assert_eq!(
        get(addr, "/kv-exists?store=sessions&key=s1").await.text(),
        "false"
    );

    // Everything is still there after a restart.
    drop(verge);
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let addr = verge.addr;
    assert_eq!(get(addr, &kv("kv-get", "default", &long)).await.text(), "v");
    assert_eq!(
        get(addr, "/kv-incr?store=default&key=n&delta=0")
            .await
            .text(),
        "7"
    );
    assert!(dir.path().join(".verge/kv/local.db").is_file());
}

#[tokio::test]
async fn ten_thousand_concurrent_increments_give_exactly_ten_thousand() {
    let dir = app_dir(&manifest(""));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let results = burst(
        verge.addr,
        64,
        10_000,
        "GET",
        |_| "/kv-incr?store=default&key=hits".to_string(),
        |_| Bytes::new(),
    )
    .await;
    let mut seen: Vec<u64> = results
        .iter()
        .map(|(_, status, body)| {
            assert_eq!(*status, 200, "{}", String::from_utf8_lossy(body));
            std::str::from_utf8(body)
                .expect("utf-8")
                .parse()
                .expect("number")
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=10_000).collect::<Vec<u64>>(),
        "every increment saw its own value"
    );
    assert_eq!(
        get(verge.addr, "/kv-get?store=default&key=hits")
            .await
            .text(),
        "10000"
    );
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9() {
    let dir = app_dir(&manifest(""));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let addr = verge.addr;
    // Writers keep going until the process dies under them.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    return acked;
                };
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                else {
                    return acked;
                };
                tokio::spawn(conn);
                for i in 0.. {
                    let key = format!("w{w}-{i}");
                    let path = kv("kv-set", "default", &key);
                    let req = request("PUT", addr, &path, full(format!("value of {key}")));
                    if sender.ready().await.is_err() {
                        return acked;
                    }
                    match sender.send_request(req).await {
                        Ok(r) if r.status() == 204 => acked.push(key),
                        _ => return acked,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    verge.signal(rustix::process::Signal::KILL);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    drop(verge);
    assert!(
        acked.len() > 50,
        "the burst wrote something: {}",
        acked.len()
    );

    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    for key in &acked {
        let r = get(verge.addr, &kv("kv-get", "default", key)).await;
        assert_eq!(
            (r.status, r.text()),
            (200, format!("value of {key}")),
            "acknowledged write {key} lost ({} acknowledged)",
            acked.len()
        );
    }
}

#[tokio::test]
async fn variables_environments_and_secrets_reach_only_declaring_components() {
    let dir = app_dir(&manifest(""));
    let secret = "s3cr3t value ✓";
    let verge = Up::new::<&str>(&[])
        .dir(dir.path())
        .env("VERGE_SECRET_API_KEY", secret)
        .start();
    let addr = verge.addr;
    assert_eq!(get(addr, "/config-get?key=greeting").await.text(), "hello");
    // `colour` exists in [variables] but this component did not declare it.
    assert_eq!(get(addr, "/config-get?key=colour").await.status, 404);
    let r = send(
        addr,
        http::Request::builder()
            .uri("/secret-check?name=api_key")
            .header("host", addr.to_string())
            .header("x-api-key", "wrong")
            .body(empty())
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(r.status(), 401);
    assert_eq!(get(addr, "/config-get?key=api_key").await.text(), secret);
    assert_eq!(
        get(addr, "/config-all").await.text(),
        format!("api_key={secret}\ngreeting=hello\n")
    );
    drop(verge);

    let verge = Up::new(&["--environment", "staging"])
        .dir(dir.path())
        .start();
    assert_eq!(
        get(verge.addr, "/config-get?key=greeting").await.text(),
        "hello from staging"
    );
    assert_eq!(
        get(verge.addr, "/config-get?key=api_key").await.status,
        404,
        "no secret set"
    );
    drop(verge);

    let run = run_verge(&["up", "--environment", "prod"], dir.path());
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("has no environment `prod`; it has: staging"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn guest_log_records_carry_level_context_and_request() {
    let dir = app_dir(&manifest(""));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let r = get(
        verge.addr,
        "/log?level=warn&context=checkout&message=card%20declined%0Aforged%20line",
    )
    .await;
    assert_eq!(r.status, 204);
    let id = r.header("x-request-id").expect("request id").to_string();
    verge.wait_for_log("card declined\\nforged line");
    let line = verge
        .log()
        .lines()
        .find(|l| l.contains("card declined"))
        .expect("logged")
        .to_string();
    for needle in [
        "WARN",
        &format!("request_id={id}"),
        "app=",
        "component=state",
        "context=checkout",
    ] {
        assert!(line.contains(needle), "{needle} missing in {line}");
    }
    // A request cannot flood the log: 2,000 messages of 1 KiB stop at 1 MiB.
    let msg = "m".repeat(1024);
    let r = get(
        verge.addr,
        &format!("/log?level=info&context=flood&repeat=2000&message={msg}"),
    )
    .await;
    assert_eq!(r.status, 204);
    verge.wait_for_log("guest log exceeded 1048576 bytes for this request");
    let logged = verge.log().matches(&msg).count();
    assert!((1000..=1024).contains(&logged), "{logged} messages logged");
}
