//! The pool's scheduling and limits, on a backend that records its batches.

use std::sync::{Arc, Mutex};

use super::*;

/// Embeds each text as `[len]` and records every batch; holds the first
/// batch until the gate opens.
struct Recorder {
    entered: std::sync::atomic::AtomicUsize,
    batches: Mutex<Vec<Vec<String>>>,
    gate: Mutex<bool>,
    opened: Condvar,
}

impl Backend for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn dimensions(&self) -> usize {
        1
    }
    fn embed(&self, texts: &[&str]) -> Result<Embedded, AiError> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.gate.lock().expect("embedding");
        while !*open {
            open = self.opened.wait(open).expect("embedding");
        }
        drop(open);
        self.batches
            .lock()
            .expect("embedding")
            .push(texts.iter().map(|t| t.to_string()).collect());
        Ok(Embedded {
            vectors: texts.iter().map(|t| vec![t.len() as f32]).collect(),
            tokens: texts.iter().map(|t| t.len() as u32).collect(),
            truncated: texts.iter().map(|t| t.len() > 8).collect(),
        })
    }
}

fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder {
        entered: Default::default(),
        batches: Mutex::new(Vec::new()),
        gate: Mutex::new(false),
        opened: Condvar::new(),
    })
}

fn open(r: &Recorder) {
    *r.gate.lock().expect("embedding") = true;
    r.opened.notify_all();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("embedding")
}

fn limits() -> EmbedLimits {
    EmbedLimits {
        batch_texts: 4,
        ..EmbedLimits::default()
    }
}

#[test]
fn a_flooding_tenant_delays_another_by_at_most_one_batch() {
    let backend = recorder();
    let pool = Arc::new(Embedder::with_backend(backend.clone(), limits(), 1));
    let rt = runtime();
    rt.block_on(async {
        // The first job takes the thread and waits at the gate.
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.embed("flood", vec!["a0".into()]).await }
        });
        while backend.entered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut flood = Vec::new();
        for i in 1..=100 {
            let pool = pool.clone();
            flood.push(tokio::spawn(async move {
                pool.embed("flood", vec![format!("a{i}")]).await
            }));
        }
        // Let every flood job reach the queue before the quiet tenant's.
        while lock(&pool.inner.queue).queued < 100 {
            tokio::task::yield_now().await;
        }
        let quiet = tokio::spawn({
            let pool = pool.clone();
            async move { pool.embed("quiet", vec!["q".into()]).await }
        });
        while lock(&pool.inner.queue).queued < 101 {
            tokio::task::yield_now().await;
        }
        open(&backend);
        assert_eq!(
            quiet.await.expect("embedding").expect("embedding").vectors,
            vec![vec![1.0]]
        );
        first.await.expect("embedding").expect("embedding");
        for job in flood {
            job.await.expect("embedding").expect("embedding");
        }
    });
    let batches = backend.batches.lock().expect("embedding");
    assert_eq!(batches[0], vec!["a0"]);
    // The second batch is the first one formed after "quiet" queued.
    assert!(batches[1].contains(&"q".to_string()), "{:?}", &batches[..3]);
    assert!(batches.iter().all(|b| b.len() <= 4));
    let texts: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(texts, 102, "every job answered once");
}

#[test]
fn each_caller_gets_its_own_vectors_and_truncation() {
    let backend = recorder();
    open(&backend);
    let pool = Arc::new(Embedder::with_backend(backend.clone(), limits(), 2));
    let rt = runtime();
    rt.block_on(async {
        let mut calls = Vec::new();
        for n in 0..20usize {
            let pool = pool.clone();
            calls.push(tokio::spawn(async move {
                let texts: Vec<String> = (0..n % 3 + 1).map(|i| "x".repeat(n + i)).collect();
                (
                    n,
                    pool.embed(&format!("t{}", n % 4), texts)
                        .await
                        .expect("embedding"),
                )
            }));
        }
        for call in calls {
            let (n, got) = call.await.expect("embedding");
            let lens: Vec<usize> = (0..n % 3 + 1).map(|i| n + i).collect();
            assert_eq!(
                got.vectors,
                lens.iter().map(|&l| vec![l as f32]).collect::<Vec<_>>()
            );
            assert_eq!(got.tokens, lens.iter().map(|&l| l as u64).sum::<u64>());
            let cut: Vec<u32> = lens
                .iter()
                .enumerate()
                .filter(|(_, l)| **l > 8)
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(got.truncated, cut);
        }
    });
}

#[test]
fn limits_refuse_before_queueing() {
    let backend = recorder();
    open(&backend);
    let pool = Embedder::with_backend(
        backend.clone(),
        EmbedLimits {
            max_texts: 3,
            max_bytes: 10,
            tokens_per_minute: 5,
            ..limits()
        },
        1,
    );
    let rt = runtime();
    rt.block_on(async {
        let err = pool
            .embed("t", vec!["a".into(); 4])
            .await
            .expect_err("refused");
        assert!(matches!(err, AiError::Invalid(_)), "{err}");
        assert_eq!(err.to_string(), "4 texts in one call; the limit is 3");
        let err = pool
            .embed("t", vec!["x".repeat(11)])
            .await
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "11 bytes of text in one call; the limit is 10"
        );
        assert_eq!(
            pool.embed("t", vec![]).await.expect("embedding"),
            Embedding::default()
        );
        // 6 tokens: allowed (the budget was not yet used up), then refused.
        pool.embed("t", vec!["abcdef".into()])
            .await
            .expect("embedding");
        let err = pool
            .embed("t", vec!["a".into()])
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err,
                AiError::Limited {
                    retry_after: 1..=60,
                    ..
                }
            ),
            "{err}"
        );
        // Another tenant is unaffected.
        pool.embed("u", vec!["a".into()]).await.expect("embedding");
    });
    assert_eq!(backend.batches.lock().expect("embedding").len(), 2);
}

#[test]
fn a_model_that_cannot_load_fails_each_call_with_the_install_command() {
    let dir = tempfile::tempdir().expect("embedding");
    let pool = Embedder::start(ModelDir::new(dir.path()), "all-minilm-l6-v2", limits(), 1);
    // Twice: a missing model is looked for again on every call.
    for _ in 0..2 {
        let err = runtime()
            .block_on(pool.embed("t", vec!["hello".into()]))
            .expect_err("refused");
        assert!(
            err.to_string().contains("verge ai pull all-minilm-l6-v2"),
            "{err}"
        );
    }
}

/// Panics on a text "panic", drops the last vector on "short".
struct Faulty;

impl Backend for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn dimensions(&self) -> usize {
        1
    }
    fn embed(&self, texts: &[&str]) -> Result<Embedded, AiError> {
        assert!(!texts.contains(&"panic"), "the backend panicked");
        let mut vectors: Vec<Vec<f32>> = texts.iter().map(|_| vec![1.0]).collect();
        if texts.contains(&"short") {
            vectors.pop();
        }
        Ok(Embedded {
            tokens: vec![1; texts.len()],
            truncated: vec![false; texts.len()],
            vectors,
        })
    }
}

#[test]
fn a_panicking_or_malformed_backend_fails_its_batch_and_the_pool_goes_on() {
    let pool = Embedder::with_backend(Arc::new(Faulty), limits(), 1);
    let rt = runtime();
    rt.block_on(async {
        let err = pool
            .embed("t", vec!["panic".into()])
            .await
            .expect_err("panicked");
        assert_eq!(err.to_string(), "inference failed: the model panicked");
        let err = pool
            .embed("t", vec!["short".into()])
            .await
            .expect_err("malformed");
        assert_eq!(
            err.to_string(),
            "inference failed: the model returned a malformed batch"
        );
        let ok = pool
            .embed("t", vec!["fine".into()])
            .await
            .expect("the pool still runs");
        assert_eq!(ok.vectors, vec![vec![1.0]]);
        // Failed calls gave their reservations back: only "fine" is charged.
        let used = lock(&pool.inner.budget).get("t").map(|(_, used)| *used);
        assert_eq!(used, Some(1));
    });
}
