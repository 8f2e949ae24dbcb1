//! Vector indexes: changes, queries, filters, bad input and persistence.

use super::*;

fn unit(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..dims)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

fn meta(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn upsert_query_delete_and_filter() {
    let dir = tempfile::tempdir().expect("index operation");
    let indexes = Indexes::new(dir.path());
    let index = indexes
        .open("t", "app", "docs", 8)
        .expect("index operation");
    for i in 0..50u64 {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        index
            .upsert(&format!("d{i}"), &unit(i, 8), meta(&[("kind", kind)]))
            .expect("index operation");
    }
    assert_eq!(index.len(), 50);
    let top = index.query(&unit(7, 8), 3, &[]).expect("index operation");
    assert_eq!(top[0].id, "d7");
    assert!((top[0].score - 1.0).abs() < 1e-5, "{}", top[0].score);
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score));
    let even = index
        .query(&unit(7, 8), 5, &meta(&[("kind", "even")]))
        .expect("index operation");
    assert_eq!(even.len(), 5);
    assert!(
        even.iter().all(|m| m.metadata == meta(&[("kind", "even")])),
        "{even:?}"
    );
    // Replacing moves the vector; deleting removes it.
    index
        .upsert("d7", &unit(1000, 8), meta(&[("kind", "moved")]))
        .expect("index operation");
    assert_eq!(index.len(), 50);
    assert_eq!(
        index
            .query(&unit(1000, 8), 1, &[])
            .expect("index operation")[0]
            .id,
        "d7"
    );
    assert!(index.delete("d7").expect("index operation"));
    assert!(!index.delete("d7").expect("index operation"));
    assert!(
        index
            .query(&unit(1000, 8), 50, &[])
            .expect("index operation")
            .iter()
            .all(|m| m.id != "d7")
    );
    assert_eq!(
        index
            .get("d8")
            .expect("index operation")
            .expect("index operation")
            .1,
        meta(&[("kind", "even")])
    );
    assert_eq!(index.get("d7").expect("index operation"), None);
}

#[test]
fn bad_vectors_ids_and_k_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("index operation");
    let index = Indexes::new(dir.path())
        .open("t", "app", "docs", 4)
        .expect("index operation");
    let cases: Vec<(&str, Vec<f32>, &str)> = vec![
        (
            "a",
            vec![1.0, 0.0, 0.0],
            "the vector has 3 dimensions; this index has 4",
        ),
        (
            "a",
            vec![1.0, f32::NAN, 0.0, 0.0],
            "the vector's value 1 is not a finite number",
        ),
        (
            "a",
            vec![f32::INFINITY, 0.0, 0.0, 0.0],
            "the vector's value 0 is not a finite number",
        ),
        (
            "a",
            vec![0.0; 4],
            "the vector is all zeros (it has no direction)",
        ),
        (
            "",
            vec![1.0, 0.0, 0.0, 0.0],
            "a vector id must be 1 to 512 bytes (got 0)",
        ),
    ];
    for (id, vector, message) in cases {
        let err = index.upsert(id, &vector, vec![]).expect_err("refused");
        assert_eq!(err.to_string(), message);
    }
    let long = "x".repeat(MAX_METADATA_BYTES);
    let err = index
        .upsert("a", &[1.0, 0.0, 0.0, 0.0], meta(&[("k", &long)]))
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "metadata of `a` is 8209 bytes; the limit is 8192"
    );
    // Empty pairs are not free, and their number is bounded.
    let empty = vec![(String::new(), String::new()); MAX_PAIRS + 1];
    let err = index
        .upsert("a", &[1.0, 0.0, 0.0, 0.0], empty)
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "`a` has 65 metadata pairs; the limit is 64"
    );
    assert!(index.is_empty());
    index
        .upsert("a", &[1.0, 0.0, 0.0, 0.0], vec![])
        .expect("index operation");
    assert_eq!(
        index
            .query(&[1.0, 0.0, 0.0, 0.0], 0, &[])
            .expect_err("refused")
            .to_string(),
        "k is 0; use 1 to 1000"
    );
    assert!(index.query(&[1.0, f32::NAN, 0.0, 0.0], 1, &[]).is_err());
    assert_eq!(
        index
            .query(&[0.0, 1.0, 0.0, 0.0], 1000, &[])
            .expect("index operation")
            .len(),
        1
    );
}

#[test]
fn indexes_survive_reopening_and_stay_per_app() {
    let dir = tempfile::tempdir().expect("index operation");
    {
        let indexes = Indexes::new(dir.path());
        let docs = indexes
            .open("t", "app", "docs", 8)
            .expect("index operation");
        for i in 0..20u64 {
            docs.upsert(
                &format!("d{i}"),
                &unit(i, 8),
                meta(&[("n", &i.to_string())]),
            )
            .expect("index operation");
        }
        docs.delete("d3").expect("index operation");
        indexes
            .open("t", "other", "docs", 8)
            .expect("index operation")
            .upsert("x", &unit(99, 8), vec![])
            .expect("index operation");
    }
    // A restarted node loads every index ahead of the first query.
    let preloaded = Indexes::new(dir.path());
    assert_eq!(preloaded.preload().expect("preload"), 2);
    let nowhere = Indexes::new(dir.path().join("none"));
    assert_eq!(nowhere.preload().expect("no folder"), 0);
    let indexes = Indexes::new(dir.path());
    assert!(
        indexes
            .existing("t", "app", "missing")
            .expect("index operation")
            .is_none()
    );
    assert!(
        indexes
            .existing("nobody", "app", "docs")
            .expect("index operation")
            .is_none()
    );
    let docs = indexes
        .existing("t", "app", "docs")
        .expect("index operation")
        .expect("index operation");
    assert_eq!(docs.len(), 19);
    assert_eq!(docs.dimensions(), 8);
    let top = docs.query(&unit(5, 8), 1, &[]).expect("index operation");
    assert_eq!(
        (top[0].id.as_str(), top[0].metadata.clone()),
        ("d5", meta(&[("n", "5")]))
    );
    assert!(docs.get("d3").expect("index operation").is_none());
    assert!(
        docs.query(&unit(99, 8), 19, &[])
            .expect("index operation")
            .iter()
            .all(|m| m.id != "x")
    );
    assert_eq!(
        indexes.list("t", "app").expect("index operation"),
        vec![("docs".to_string(), 19)]
    );
    // The stored dimensions win over a later caller's.
    assert_eq!(
        indexes
            .open("t", "app", "docs", 384)
            .expect("index operation")
            .dimensions(),
        8
    );
}

#[test]
fn recall_against_exact_search_on_clustered_vectors() {
    let dir = tempfile::tempdir().expect("index operation");
    let index = Indexes::new(dir.path())
        .open("t", "app", "big", 32)
        .expect("index operation");
    let centres: Vec<Vec<f32>> = (0..20).map(|c| unit(10_000 + c, 32)).collect();
    // A point of cluster `i % 20`, its noise seeded by `i`.
    let point = |i: u64| -> Vec<f32> {
        let noise = unit(i, 32);
        let c = &centres[(i % 20) as usize];
        let v: Vec<f32> = c.iter().zip(&noise).map(|(a, b)| a + 0.5 * b).collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.into_iter().map(|a| a / n).collect()
    };
    let data: Vec<Vec<f32>> = (0..3000u64).map(point).collect();
    index
        .upsert_many(
            data.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v.clone(), vec![]))
                .collect(),
        )
        .expect("index operation");
    let mut hits = 0;
    for q in 0..50u64 {
        // Queries are new points of the same clusters, as a search for
        // text near indexed texts is.
        let query = point(50_000 + q);
        let mut exact: Vec<(f32, usize)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (v.iter().zip(&query).map(|(a, b)| a * b).sum(), i))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth: Vec<String> = exact[..10].iter().map(|(_, i)| i.to_string()).collect();
        hits += index
            .query(&query, 10, &[])
            .expect("index operation")
            .iter()
            .filter(|m| truth.contains(&m.id))
            .count();
    }
    assert!(hits >= 475, "recall@10 {}/500", hits);
}

#[test]
fn the_last_of_repeated_ids_in_one_batch_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Indexes::new(dir.path())
        .open("t", "app", "docs", 8)
        .expect("open");
    let items: Vec<Item> = (0..2000u64)
        .map(|i| {
            (
                format!("d{}", i % 1000),
                unit(i, 8),
                meta(&[("i", &i.to_string())]),
            )
        })
        .collect();
    index.upsert_many(items).expect("upsert");
    assert_eq!(index.len(), 1000);
    let (vector, metadata) = index.get("d7").expect("get").expect("present");
    assert_eq!(metadata, meta(&[("i", "1007")]));
    assert!(
        vector
            .iter()
            .zip(unit(1007, 8))
            .all(|(a, b)| (a - b).abs() < 1e-6)
    );
    assert_eq!(
        index.query(&unit(1007, 8), 1, &[]).expect("query")[0].id,
        "d7"
    );
}
