"""Per-feature statistics and the distances between two distributions of a feature.

One home for what the validate stage, the schema, and the serving-time drift check measure
of a feature, so they compare like with like:

    numeric      count, missing, mean, std, min, max, and a histogram over 10 quantile buckets
                 of the data (outer buckets open-ended, so later values always land in one)
    categorical  count, missing (''), distinct values, the 100 most frequent with their counts
    text         count, empty, mean words, and a histogram of words per value
    image        shape, dtype, pixel mean/std/min/max, and a 16-bucket pixel histogram

Distances follow TFDV's defaults: the L-infinity distance between category shares, and the
Jensen-Shannon divergence (base 2, so 0 to 1) between histograms over the reference's buckets
for everything else. A summary is plain JSON; `distance` compares a reference summary with
new values of the same feature.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any

import numpy as np

from pipeline.core.problem import CATEGORICAL, IMAGE, NUMERIC, TEXT

QUANTILE_BUCKETS = 10
TOP_VALUES = 100
PIXEL_BUCKETS = 16
JENSEN_SHANNON, L_INFINITY = "jensen_shannon", "l_infinity"
_WORD = re.compile(r"\w+")


def _edges(values: np.ndarray) -> list[float]:
    """Inner bucket edges at the values' deciles (duplicates merged): len(edges) + 1 buckets."""
    if values.size == 0:
        return []
    quantiles = np.quantile(values, np.linspace(0, 1, QUANTILE_BUCKETS + 1)[1:-1])
    return sorted({float(q) for q in quantiles})


def bucket_counts(values: np.ndarray, edges: list[float]) -> list[int]:
    """How many values fall in each bucket (-inf, e1], (e1, e2], ..., (e_n, inf)."""
    if not len(values):
        return [0] * (len(edges) + 1)
    positions = np.searchsorted(np.asarray(edges, np.float64), values, side="left")
    return np.bincount(positions, minlength=len(edges) + 1).astype(int).tolist()


def numeric_summary(values: np.ndarray) -> dict[str, Any]:
    numbers = np.asarray(values, np.float64)
    present = numbers[~np.isnan(numbers)]
    edges = _edges(present)
    return {
        "count": int(len(numbers)),
        "missing": int(len(numbers) - len(present)),
        "mean": float(present.mean()) if present.size else None,
        "std": float(present.std()) if present.size else None,
        "min": float(present.min()) if present.size else None,
        "max": float(present.max()) if present.size else None,
        "histogram": {"edges": edges, "counts": bucket_counts(present, edges)},
    }


def categorical_summary(values: np.ndarray) -> dict[str, Any]:
    counts = collections.Counter(values.tolist())
    top = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    kept = top[:TOP_VALUES]
    return {
        "count": int(len(values)),
        "missing": int(counts.get("", 0)),
        "distinct": len(counts),
        "top": [[value if isinstance(value, str) else int(value), count] for value, count in kept],
        "other": int(sum(count for _, count in top[TOP_VALUES:])),
    }


def _words(values: np.ndarray) -> np.ndarray:
    return np.asarray([len(_WORD.findall(text)) for text in values], np.float64)


def text_summary(values: np.ndarray) -> dict[str, Any]:
    words = _words(values)
    edges = _edges(words)
    return {
        "count": int(len(values)),
        "empty": int(sum(1 for text in values if not text)),
        "mean_words": float(words.mean()) if words.size else 0.0,
        "histogram": {"edges": edges, "counts": bucket_counts(words, edges)},
    }


def pixel_histogram(images: np.ndarray) -> list[int]:
    """Counts of uint8 pixel values in `PIXEL_BUCKETS` equal buckets of 0-255."""
    buckets = np.bincount(np.asarray(images, np.uint8).ravel() // (256 // PIXEL_BUCKETS), minlength=PIXEL_BUCKETS)
    return buckets.astype(int).tolist()


def image_summary(images: np.ndarray) -> dict[str, Any]:
    pixels = images.astype(np.float64)
    return {
        "image_shape": list(images.shape[1:]),
        "dtype": str(images.dtype),
        "pixel_mean": float(pixels.mean()) if pixels.size else 0.0,
        "pixel_std": float(pixels.std()) if pixels.size else 0.0,
        "pixel_min": int(images.min()) if images.size else 0,
        "pixel_max": int(images.max()) if images.size else 0,
        "pixel_histogram": pixel_histogram(images),
    }


SUMMARIES = {NUMERIC: numeric_summary, CATEGORICAL: categorical_summary, TEXT: text_summary, IMAGE: image_summary}


def summarize(kind: str, values: np.ndarray) -> dict[str, Any]:
    """The summary of one feature's values (see the module doc)."""
    return SUMMARIES[kind](values)


def jensen_shannon(p_counts, q_counts) -> float:
    """Jensen-Shannon divergence (base 2: 0 identical, 1 disjoint) of two count vectors of equal length."""
    p = np.asarray(p_counts, np.float64)
    q = np.asarray(q_counts, np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / m[mask])).sum())

    return max(0.0, min(1.0, (kl(p) + kl(q)) / 2))


def shares(top: list, other: int = 0) -> dict[Any, float]:
    """Category shares from `categorical_summary`'s top values (and the rest as one '<other>' share)."""
    total = sum(count for _, count in top) + other
    result = {value: count / total for value, count in top} if total else {}
    if other and total:
        result["<other>"] = other / total
    return result


def l_infinity(a: dict[Any, float], b: dict[Any, float]) -> float:
    """The largest difference of one category's share between two share mappings."""
    return max((abs(a.get(key, 0.0) - b.get(key, 0.0)) for key in set(a) | set(b)), default=0.0)


def distance(kind: str, reference: dict[str, Any], values: np.ndarray) -> tuple[str, float, dict[str, Any]]:
    """How far new values of a feature are from a reference summary.

    Args:
        kind: The feature's kind.
        reference: Its summary on the reference data (`summarize`).
        values: The new values.

    Returns:
        (measure name, distance, the two distributions compared {"buckets", "reference", "current"}).
    """
    if kind == CATEGORICAL:
        reference_shares = shares(reference["top"], reference.get("other", 0))
        current = categorical_summary(values)
        current_shares = shares(current["top"], current["other"])
        buckets = [value for value, _ in reference["top"]][:20]
        unseen = sorted(set(current_shares) - set(reference_shares), key=lambda v: -current_shares[v])[:5]
        return (
            L_INFINITY,
            l_infinity(reference_shares, current_shares),
            {
                "buckets": [str(b) for b in buckets + unseen],
                "reference": [reference_shares.get(b, 0.0) for b in buckets + unseen],
                "current": [current_shares.get(b, 0.0) for b in buckets + unseen],
            },
        )
    if kind == IMAGE:
        before, now = reference["pixel_histogram"], pixel_histogram(values)
        labels = [f"{i * 256 // PIXEL_BUCKETS}-" for i in range(PIXEL_BUCKETS)]
    else:
        edges = reference["histogram"]["edges"]
        measured = _words(values) if kind == TEXT else np.asarray(values, np.float64)
        measured = measured[~np.isnan(measured)]
        before, now = reference["histogram"]["counts"], bucket_counts(measured, edges)
        labels = ["<=" + _short(edges[0])] if edges else ["all"]
        labels += [f"{_short(a)}-{_short(b)}" for a, b in zip(edges, edges[1:], strict=False)]
        labels += [">" + _short(edges[-1])] if edges else []
    return JENSEN_SHANNON, jensen_shannon(before, now), {"buckets": labels, **_normalized(before, now)}


def _normalized(before, now) -> dict[str, list[float]]:
    def norm(counts):
        total = float(sum(counts))
        return [c / total if total else 0.0 for c in counts]

    return {"reference": norm(before), "current": norm(now)}


def _short(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)
