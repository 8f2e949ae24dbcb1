//! [`LinearHead`]: a small classifier trained from labelled examples on top
//! of the embeddings (multinomial logistic regression), for `verge ai
//! train` and `classify-with`.
//!
//! **Invariants**
//! - A head has at least two labels and one weight row per label, each of
//!   the embedding's dimensions; [`LinearHead::check`] holds for every head
//!   stored or loaded.
//! - Training is deterministic: the same examples give the same head.
//! - Scores are probabilities (softmax): they sum to 1, best first.

use serde::{Deserialize, Serialize};

use super::LabelScore;
use crate::AiError;

/// Most labels one head may have.
pub const MAX_LABELS: usize = 100;

/// A trained classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    /// The model whose embeddings it was trained on.
    pub model: String,
    /// Labels, in weight-row order.
    pub labels: Vec<String>,
    /// One weight row per label.
    pub weights: Vec<Vec<f32>>,
    /// One bias per label.
    pub bias: Vec<f32>,
}

/// How training went.
#[derive(Clone, Debug, PartialEq)]
pub struct Trained {
    /// The head.
    pub head: LinearHead,
    /// Share of the training examples it labels right.
    pub train_accuracy: f32,
}

/// Trains a head on `examples` (unit vectors with a label), with full-batch
/// gradient descent on the cross-entropy plus a small L2 penalty.
pub fn train(model: &str, examples: &[(Vec<f32>, String)]) -> Result<Trained, AiError> {
    let mut labels: Vec<String> = examples.iter().map(|(_, l)| l.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        return Err(AiError::Invalid(format!(
            "training needs examples of at least 2 labels (got {})",
            labels.len()
        )));
    }
    if labels.len() > MAX_LABELS {
        return Err(AiError::Invalid(format!(
            "{} labels; a classifier has at most {MAX_LABELS}",
            labels.len()
        )));
    }
    let dims = examples[0].0.len();
    if examples.iter().any(|(v, _)| v.len() != dims) {
        return Err(AiError::Invalid(
            "examples have vectors of different dimensions".to_owned(),
        ));
    }
    let targets: Vec<usize> = examples
        .iter()
        .map(|(_, l)| labels.binary_search(l).unwrap_or(0))
        .collect();
    let (classes, n) = (labels.len(), examples.len() as f32);
    let mut head = LinearHead {
        model: model.to_owned(),
        labels,
        weights: vec![vec![0.0; dims]; classes],
        bias: vec![0.0; classes],
    };
    // Unit inputs keep the loss smooth: a large fixed step converges.
    const STEPS: usize = 300;
    const RATE: f32 = 4.0;
    const L2: f32 = 1e-4;
    for _ in 0..STEPS {
        let mut grad_w = vec![vec![0.0f32; dims]; classes];
        let mut grad_b = vec![0.0f32; classes];
        for ((vector, _), &target) in examples.iter().zip(&targets) {
            let p = head.probabilities(vector);
            for c in 0..classes {
                let err = p[c] - if c == target { 1.0 } else { 0.0 };
                grad_b[c] += err;
                for (g, x) in grad_w[c].iter_mut().zip(vector) {
                    *g += err * x;
                }
            }
        }
        for c in 0..classes {
            head.bias[c] -= RATE * grad_b[c] / n;
            for (w, g) in head.weights[c].iter_mut().zip(&grad_w[c]) {
                *w -= RATE * (g / n + L2 * *w);
            }
        }
    }
    let right = examples
        .iter()
        .zip(&targets)
        .filter(|((v, _), t)| head.best(v) == **t)
        .count();
    Ok(Trained {
        train_accuracy: right as f32 / n,
        head,
    })
}

impl LinearHead {
    /// Checks the head's shape: labels, rows and biases agree, at least two
    /// labels, every weight finite.
    pub fn check(&self, dimensions: usize) -> Result<(), AiError> {
        let classes = self.labels.len();
        let shaped = (2..=MAX_LABELS).contains(&classes)
            && self.weights.len() == classes
            && self.bias.len() == classes
            && self.weights.iter().all(|row| row.len() == dimensions);
        let finite = self
            .weights
            .iter()
            .flatten()
            .chain(&self.bias)
            .all(|x| x.is_finite());
        if shaped && finite {
            Ok(())
        } else {
            Err(AiError::Corrupt(format!(
                "the classifier for {} labels is malformed; train it again with `verge ai train`",
                classes
            )))
        }
    }

    fn probabilities(&self, vector: &[f32]) -> Vec<f32> {
        let logits: Vec<f32> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| w.iter().zip(vector).map(|(a, x)| a * x).sum::<f32>() + b)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect()
    }

    fn best(&self, vector: &[f32]) -> usize {
        let p = self.probabilities(vector);
        (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .unwrap_or(0)
    }

    /// The labels with their probabilities for `vector`, best first.
    pub fn predict(&self, vector: &[f32]) -> Vec<LabelScore> {
        let mut scored: Vec<LabelScore> = self
            .labels
            .iter()
            .zip(self.probabilities(vector))
            .map(|(label, score)| LabelScore {
                label: label.clone(),
                score,
            })
            .collect();
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn learns_separable_labels_and_scores_are_probabilities() {
        // Three directions with some spread around each.
        let mut examples = Vec::new();
        for i in 0..30 {
            let jitter = (i % 5) as f32 * 0.1;
            let (v, label) = match i % 3 {
                0 => (vec![1.0, jitter, 0.0, 0.1], "a"),
                1 => (vec![jitter, 1.0, 0.1, 0.0], "b"),
                _ => (vec![0.0, 0.1, jitter, 1.0], "c"),
            };
            examples.push((unit(v), label.to_string()));
        }
        let trained = train("m", &examples).expect("trained");
        assert_eq!(trained.train_accuracy, 1.0);
        assert_eq!(trained.head.labels, ["a", "b", "c"]);
        trained.head.check(4).expect("well formed");
        let scores = trained.head.predict(&unit(vec![0.1, 0.9, 0.2, 0.0]));
        assert_eq!(scores[0].label, "b");
        assert!(scores[0].score > 0.5, "{scores:?}");
        let sum: f32 = scores.iter().map(|s| s.score).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        // Deterministic.
        assert_eq!(train("m", &examples).expect("trained").head, trained.head);
    }

    #[test]
    fn bad_training_sets_and_malformed_heads_are_refused() {
        let one = vec![(vec![1.0, 0.0], "a".to_string()); 3];
        assert_eq!(
            train("m", &one).expect_err("one label").to_string(),
            "training needs examples of at least 2 labels (got 1)"
        );
        let mixed = vec![
            (vec![1.0, 0.0], "a".to_string()),
            (vec![1.0], "b".to_string()),
        ];
        assert!(train("m", &mixed).is_err());
        let mut head = train(
            "m",
            &[(vec![1.0, 0.0], "a".into()), (vec![0.0, 1.0], "b".into())],
        )
        .expect("trained")
        .head;
        assert!(head.check(3).is_err(), "wrong dimensions");
        head.weights[0][0] = f32::NAN;
        assert!(head.check(2).is_err(), "not finite");
    }
}
