//! Score-aware fusion of a dense and a keyword result list, computed in Warden (Milvus's own
//! rerankers do RRF and a weighted sum; these need both lists' raw scores).
//!
//! - `MinMax`: each list's scores rescaled to [0, 1] by its own lowest and highest, then a
//!   weighted sum (the convex combination of Bruch, Gai and Ingber, "An Analysis of Fusion
//!   Functions for Hybrid Retrieval", ACM TOIS 2023).
//! - `Dbsf`: distribution-based score fusion (as Qdrant names it): each list's scores rescaled
//!   so that its mean − 3σ is 0 and its mean + 3σ is 1 (clipped), then a weighted sum. Less
//!   swayed than min–max by one outlier at the top of a list.
//!
//! A chunk found by one list only gets 0 from the other.

use std::collections::HashMap;

use super::Hit;

/// How the two lists' scores are put on one scale before they are added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalise {
    MinMax,
    Dbsf,
}

/// The fused list, best first, at most `limit` long.
pub fn fuse(
    dense: Vec<Hit>,
    keyword: Vec<Hit>,
    normalise: Normalise,
    weights: (f32, f32),
    limit: usize,
) -> Vec<Hit> {
    let dense_scores = rescaled(&dense, normalise);
    let keyword_scores = rescaled(&keyword, normalise);
    let mut fused: Vec<Hit> = Vec::with_capacity(dense.len() + keyword.len());
    let mut at: HashMap<(String, i64), usize> = HashMap::new();
    for (list, scores, weight) in [
        (dense, dense_scores, weights.0),
        (keyword, keyword_scores, weights.1),
    ] {
        for (mut hit, score) in list.into_iter().zip(scores) {
            let key = (hit.doc_id.clone(), hit.chunk_index);
            match at.get(&key) {
                Some(&i) => fused[i].score += weight * score,
                None => {
                    at.insert(key, fused.len());
                    hit.score = weight * score;
                    fused.push(hit);
                }
            }
        }
    }
    // Ties keep the dense list's order first, then the keyword list's (a stable sort).
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused.truncate(limit);
    fused
}

fn rescaled(hits: &[Hit], normalise: Normalise) -> Vec<f32> {
    let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
    if scores.is_empty() {
        return scores;
    }
    let (low, high) = match normalise {
        Normalise::MinMax => (
            scores.iter().copied().fold(f32::INFINITY, f32::min),
            scores.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        ),
        Normalise::Dbsf => {
            let n = scores.len() as f32;
            let mean = scores.iter().sum::<f32>() / n;
            let deviation = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / n).sqrt();
            (mean - 3.0 * deviation, mean + 3.0 * deviation)
        }
    };
    let span = high - low;
    scores
        .iter()
        .map(|s| {
            if span > f32::EPSILON {
                ((s - low) / span).clamp(0.0, 1.0)
            } else {
                // One score, or all equal: every hit of the list counts fully.
                1.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, score: f32) -> Hit {
        Hit {
            doc_id: doc.to_owned(),
            chunk_index: 0,
            text: String::new(),
            source: doc.to_owned(),
            heading: String::new(),
            score,
        }
    }

    fn order(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|h| h.doc_id.as_str()).collect()
    }

    #[test]
    fn scores_on_different_scales_are_made_comparable() {
        // Cosine similarities near each other, BM25 scores far apart: raw sums would let
        // BM25 decide alone.
        let dense = vec![hit("a", 0.82), hit("b", 0.80), hit("c", 0.60)];
        let keyword = vec![hit("b", 14.0), hit("c", 13.0), hit("d", 2.0)];
        let fused = fuse(
            dense.clone(),
            keyword.clone(),
            Normalise::MinMax,
            (0.5, 0.5),
            10,
        );
        assert_eq!(order(&fused), ["b", "a", "c", "d"]);
        // b: 0.5·0.909 + 0.5·1; a: 0.5·1; c: 0 + 0.5·0.917; d: 0.
        assert!((fused[0].score - 0.954).abs() < 0.01, "{fused:?}");
        let keyword_only = fuse(dense, keyword, Normalise::MinMax, (0.0, 1.0), 2);
        assert_eq!(order(&keyword_only), ["b", "c"]);
    }

    #[test]
    fn distribution_based_fusion_resists_one_outlier() {
        // One far-off top score: min–max squeezes the rest of the list to nothing.
        let dense = vec![hit("a", 0.9), hit("b", 0.5), hit("c", 0.49), hit("d", 0.48)];
        let min_max = rescaled(&dense, Normalise::MinMax);
        let dbsf = rescaled(&dense, Normalise::Dbsf);
        assert!(min_max[1] < 0.05, "{min_max:?}");
        assert!(dbsf[1] > 0.35 && dbsf[0] < 1.0, "{dbsf:?}");
        assert!(
            dbsf.windows(2).all(|w| w[0] >= w[1]),
            "order kept: {dbsf:?}"
        );
        let fused = fuse(
            dense,
            vec![hit("c", 10.0), hit("b", 9.0), hit("a", 1.0)],
            Normalise::Dbsf,
            (0.5, 0.5),
            10,
        );
        assert_eq!(fused.len(), 4);
        assert!(
            fused.iter().all(|h| (0.0..=1.0).contains(&h.score)),
            "{fused:?}"
        );
    }

    #[test]
    fn a_list_of_equal_scores_or_none_still_fuses() {
        let fused = fuse(
            vec![hit("a", 0.5), hit("b", 0.5)],
            Vec::new(),
            Normalise::Dbsf,
            (0.5, 0.5),
            10,
        );
        assert_eq!(order(&fused), ["a", "b"]);
        assert_eq!(fused[0].score, 0.5);
    }
}
