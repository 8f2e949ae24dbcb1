//! Classification on embeddings. Zero-shot ([`rank`]): a text belongs to
//! the label (or label description) whose embedding is most similar to its
//! own. Trained ([`LinearHead`]): a small classifier learnt from examples.
//!
//! **Invariant**: zero-shot scores are cosine similarities of unit vectors,
//! so they are comparable across calls; labels are ranked best first.

mod head;

pub use head::{LinearHead, MAX_LABELS, Trained, train};

/// One label and how well the text matches it.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelScore {
    /// The label as given.
    pub label: String,
    /// Zero-shot: cosine similarity between the text and the label, -1 to
    /// 1. Trained: the label's probability, 0 to 1.
    pub score: f32,
}

/// Ranks `labels` by the similarity of their vectors to `text`'s, best
/// first. All vectors are unit length (as [`crate::Embedder`] returns them).
pub fn rank(text: &[f32], labels: Vec<String>, label_vectors: &[Vec<f32>]) -> Vec<LabelScore> {
    let mut scored: Vec<LabelScore> = labels
        .into_iter()
        .zip(label_vectors)
        .map(|(label, v)| LabelScore {
            label,
            score: text.iter().zip(v).map(|(a, b)| a * b).sum(),
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_ranked_by_cosine() {
        let ranked = rank(
            &[1.0, 0.0],
            vec!["far".into(), "near".into(), "opposite".into()],
            &[vec![0.0, 1.0], vec![0.8, 0.6], vec![-1.0, 0.0]],
        );
        let got: Vec<(&str, f32)> = ranked.iter().map(|l| (l.label.as_str(), l.score)).collect();
        assert_eq!(got, vec![("near", 0.8), ("far", 0.0), ("opposite", -1.0)]);
    }
}
