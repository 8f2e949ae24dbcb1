//! An app of several components: path prefixes, hosts, and what happens
//! when nothing matches.

use crate::support::*;

fn two_component_app() -> tempfile::TempDir {
    let g = guests();
    app_dir(&format!(
        r#"
name = "routes"

[component.tp]
source = {tp}
routes = ["/tp", {{ path = "/", host = "tp.example.test" }}]

[component.hello]
source = {hello}
routes = ["/hello"]
"#,
        tp = toml_path(&g.test_programs),
        hello = toml_path(&g.hello),
    ))
}

#[tokio::test]
async fn requests_go_to_the_component_owning_the_route() {
    let dir = two_component_app();
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();

    let hello = get(verge.addr, "/hello").await;
    assert_eq!(hello.text(), "Hello, world!\n");
    assert_eq!(
        get(verge.addr, "/hello/deeper/path").await.text(),
        "Hello, world!\n"
    );

    let tp = get(verge.addr, "/tp/headers").await;
    assert_eq!(tp.status, 200);
    assert!(
        tp.text().contains("path=/tp/headers"),
        "the full path reaches the guest: {}",
        tp.text()
    );

    // A prefix matches whole segments only.
    let miss = get(verge.addr, "/hellothere").await;
    assert_eq!(miss.status, 404);
    assert!(miss.text().contains("no route"), "{}", miss.text());

    // A host-bound route wins for its host only.
    let by_host = buffer(
        send(
            verge.addr,
            http::Request::builder()
                .uri("/anything")
                .header("host", "TP.example.test:1234")
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("response"),
    )
    .await
    .expect("body");
    assert_eq!(by_host.text(), "hello from test-programs\n");
    assert_eq!(get(verge.addr, "/anything").await.status, 404);
}

#[tokio::test]
async fn one_folder_argument_serves_its_manifest() {
    let dir = two_component_app();
    let verge = Verge::up(&[dir.path().to_str().expect("utf-8")]);
    assert_eq!(get(verge.addr, "/hello").await.status, 200);
    let with_flag = Verge::up(&["-f", dir.path().join("verge.toml").to_str().expect("utf-8")]);
    assert_eq!(get(with_flag.addr, "/hello").await.status, 200);
}
