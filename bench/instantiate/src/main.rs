//! How long one request takes inside the executor alone: a fresh store and
//! instance, the guest's handler, the response body drained, the instance
//! freed. No sockets, no HTTP parsing. Usage:
//! `instantiate path/to/hello.wasm [requests]` (run the release build).

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use verge_capabilities::{Capabilities, Limits};
use verge_executor::{Executor, ExecutorConfig, RequestContext, RequestId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let wasm = PathBuf::from(
        args.next()
            .ok_or("usage: instantiate HELLO.wasm [requests]")?,
    );
    let requests: u32 = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(100_000);
    let executor = Executor::new(&ExecutorConfig::default())?;
    let component = executor.load(
        &verge_executor::AppContext::local("hello"),
        "hello",
        &wasm,
        &Capabilities::default(),
        Limits::default(),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let one = || async {
            let request = http::Request::builder()
                .uri("http://bench/")
                .body(Empty::<Bytes>::new())
                .expect("valid request");
            let response = component
                .handle(request, RequestContext::new(RequestId::next()))
                .await
                .expect("hello answers");
            response.into_body().collect().await.expect("body");
        };
        for _ in 0..1000 {
            one().await;
        }
        let started = Instant::now();
        for _ in 0..requests {
            one().await;
        }
        let per = started.elapsed() / requests;
        println!("{requests} requests on one thread: {per:?} per request (instantiate, run, drop)");
    });
    Ok(())
}
