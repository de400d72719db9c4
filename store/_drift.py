"""The drift figure: how many tokens sit far from every centroid, so users know when to retrain.

At the first add (when the codec is trained) the writer records a threshold: the 99th
percentile of the residual norm ||x - C[code]|| over up to 2^14 tokens of that add that
k-means did not train on (`residual_norm_p99` in the codec group's attributes; when the
add is no larger than the training sample, over training tokens: k-means fits those
more closely, so the threshold is lower and later data of the same kind reads above 1%). Every segment written later
records how many of its tokens exceed it (`far_tokens` in the segment's attributes).
Tokens like the training data exceed it about 1% of the time; a segment whose share
is many times that holds documents the centroids do not describe well (new topics,
another encoder): search quality drops, and rebuilding the store retrains the codec.

The cost is one dot product per token at write time (x and C[code] are unit vectors,
so ||x - c||^2 = 2 - 2<x, c>), and two integers in metadata. Nothing is decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._smallarray import read_attributes

DRIFT_QUANTILE = 0.99
THRESHOLD_SAMPLE = 1 << 14  # tokens of the training sample used to set the threshold
THRESHOLD_ATTR = "residual_norm_p99"
FAR_ATTR = "far_tokens"


def residual_norms(centroids: np.ndarray, tokens: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """||x - C[code]|| of each unit-norm token row (float32)."""
    dots = np.einsum("ij,ij->i", tokens, np.take(centroids, codes.astype(np.int64), axis=0))
    return np.sqrt(np.maximum(2.0 - 2.0 * dots, 0.0)).astype(np.float32)


def threshold(centroids: np.ndarray, sample: np.ndarray, codes: np.ndarray) -> float:
    """The residual-norm quantile of a sample of training tokens: the line between near and far."""
    return float(np.quantile(residual_norms(centroids, sample, codes), DRIFT_QUANTILE))


def count_far(centroids: np.ndarray, tokens: np.ndarray, codes: np.ndarray, limit: float | None) -> int:
    """How many token rows have a residual norm above `limit` (0 when the store has no threshold)."""
    if limit is None:
        return 0
    return int((residual_norms(centroids, tokens, codes) > limit).sum())


def summarize(segments: list[tuple[str, int, int | None]], limit: float | None) -> dict:
    """stats()["drift"]: per segment (name, tokens, far_tokens or None when not recorded) and overall.

    far_fraction: share of the recorded segments' tokens that sit far from every centroid;
    expected: what tokens like the training data give (1 - DRIFT_QUANTILE).
    """
    known = [(n, t, f) for n, t, f in segments if f is not None]
    tokens = sum(t for _, t, _ in known)
    far = sum(f for _, _, f in known)
    return {
        "threshold": limit,
        "expected_fraction": round(1.0 - DRIFT_QUANTILE, 6),
        "far_tokens": far,
        "far_fraction": far / tokens if tokens else None,
        "segments": {n: (f / t if t else 0.0) for n, t, f in known},
    }


def segment_far_tokens(path: Path) -> int | None:
    """The far-token count a segment recorded at write time (None when it has none)."""
    value = read_attributes(path).get(FAR_ATTR)
    return int(value) if isinstance(value, int) else None


def codec_threshold(codec_path: Path) -> float | None:
    """The residual-norm threshold recorded in the codec group at the first add (None for older stores)."""
    value = read_attributes(codec_path).get(THRESHOLD_ATTR)
    return float(value) if isinstance(value, (int, float)) else None
