//! The examples work as the README says: `verge up examples/NAME` builds
//! the example with its manifest's build command and serves it.

use crate::support::*;

#[tokio::test]
async fn verge_up_on_the_hello_example_builds_and_serves_it() {
    let verge = Up::new(&["examples/hello"]).dir(&repo()).start();
    verge.wait_for_log("Building hello");
    let r = get(verge.addr, "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, world!\n"));
}

#[test]
fn every_example_manifest_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples/") {
        let manifest = entry.expect("entry").path().join("verge.toml");
        if manifest.is_file() {
            if let Err(e) = verge_manifest::Manifest::load(&manifest) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no example has a verge.toml");
}
