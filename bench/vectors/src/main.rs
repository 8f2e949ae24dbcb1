//! The vector index against exact search, on this machine.
//!
//! Builds an index of N unit vectors of 384 dimensions (default 100,000)
//! through `verge_ai::Indexes` (SQLite commit and HNSW insert, in batches
//! of 1,000), then runs 1,000 queries and compares each top 10 with exact
//! search (a full scan). The vectors are a mixture of 2,000 clusters with
//! noise, like embeddings of texts on many topics (two points of a cluster
//! have a cosine near 0.6, as related sentences do); the queries are new
//! points of the same mixture. Prints build time, reopen time (rebuilding
//! the graph from SQLite, as after a restart), graph memory, recall@10 and
//! query latency percentiles, and the exact scan's latency for scale.
//!
//! Usage: `vectors [N] [NOISE]` (NOISE 0.14 by default: a cosine near 0.6
//! within a cluster; 0.3 gives about 0.25, a much harder case).

use std::time::{Duration, Instant};

const DIMS: usize = 384;
const CLUSTERS: u64 = 2000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn point(centres: &[Vec<f32>], rng: &mut Rng, i: u64, noise: f32) -> Vec<f32> {
    let c = &centres[(i % CLUSTERS) as usize];
    normalised(c.iter().map(|x| x + noise * rng.next()).collect())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), verge_ai::AiError> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let noise: f32 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.14);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|_| normalised((0..DIMS).map(|_| rng.next()).collect()))
        .collect();
    let data: Vec<Vec<f32>> = (0..n as u64)
        .map(|i| point(&centres, &mut rng, i, noise))
        .collect();
    let dir = tempfile::tempdir().map_err(|e| verge_ai::AiError::Storage(e.to_string()))?;

    let started = Instant::now();
    {
        let index = verge_ai::Indexes::new(dir.path()).open("bench", "app", "docs", DIMS)?;
        for (b, batch) in data.chunks(1000).enumerate() {
            let items = batch
                .iter()
                .enumerate()
                .map(|(i, v)| ((b * 1000 + i).to_string(), v.clone(), vec![]))
                .collect();
            index.upsert_many(items)?;
        }
    }
    let build = started.elapsed();
    let started = Instant::now();
    let indexes = verge_ai::Indexes::new(dir.path());
    let index = indexes
        .existing("bench", "app", "docs")?
        .ok_or_else(|| verge_ai::AiError::NoIndex("docs".into()))?;
    let reopen = started.elapsed();
    assert_eq!(index.len(), n);

    let queries: Vec<Vec<f32>> = (0..1000u64)
        .map(|i| point(&centres, &mut rng, i * 7919, noise))
        .collect();
    let mut latency = Vec::new();
    let mut exact_latency = Vec::new();
    let mut hits = 0;
    for q in &queries {
        let t = Instant::now();
        let found = index.query(q, 10, &[])?;
        latency.push(t.elapsed());
        let t = Instant::now();
        let mut scores: Vec<(f32, usize)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i))
            .collect();
        scores.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
        exact_latency.push(t.elapsed());
        let truth: Vec<String> = scores[..10].iter().map(|(_, i)| i.to_string()).collect();
        hits += found.iter().filter(|m| truth.contains(&m.id)).count();
    }
    latency.sort();
    exact_latency.sort();
    println!("vectors            {n} x {DIMS} (f32, cosine), noise {noise}");
    println!(
        "build              {:.1} s ({:.0} vectors/s, durable batches of 1,000)",
        build.as_secs_f64(),
        n as f64 / build.as_secs_f64()
    );
    println!(
        "reopen             {:.1} s (graph rebuilt from SQLite)",
        reopen.as_secs_f64()
    );
    println!(
        "graph memory       {:.0} MiB",
        index.memory_bytes() as f64 / (1 << 20) as f64
    );
    println!(
        "recall@10          {:.4}",
        hits as f64 / (10.0 * queries.len() as f64)
    );
    println!(
        "query latency      p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        pct(&latency, 0.5).as_secs_f64() * 1e3,
        pct(&latency, 0.99).as_secs_f64() * 1e3,
        latency[latency.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "exact scan         p50 {:.3} ms  p99 {:.3} ms",
        pct(&exact_latency, 0.5).as_secs_f64() * 1e3,
        pct(&exact_latency, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
