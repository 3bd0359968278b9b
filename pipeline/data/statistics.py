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

Every summary comes from an accumulator (`accumulator(kind)`) that takes a feature's values
batch by batch and merges with the accumulators of other parts of the data, so statistics
are computed in one pass, in bounded memory, and per shard then merged: numbers keep exact
value counts while they have few distinct values and a log-bucket sketch always (deciles
within 0.5%), categories exact counts (up to `CATEGORY_LIMIT` distinct values), images a
count per pixel value.
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


# Numbers: exact value counts while a feature has at most this many distinct values, and always
# a log-bucket sketch (each bucket spans a factor SKETCH_GAMMA: values within 0.5%), both mergeable.
EXACT_VALUES = 1024
SKETCH_GAMMA = 1.01
_LOG_GAMMA = math.log(SKETCH_GAMMA)
_SKETCH_OFFSET = 80_000  # keys of positive values > 0, of negative values < 0, zero is 0
# Categories: exact counts of at most this many distinct values; later new values count as 'other'.
CATEGORY_LIMIT = 100_000


def _sketch_keys(numbers: np.ndarray) -> np.ndarray:
    keys = np.zeros(len(numbers), np.int64)
    magnitude = np.abs(numbers)
    nonzero = magnitude > 1e-300
    logs = np.clip(np.log(magnitude[nonzero]) / _LOG_GAMMA, -_SKETCH_OFFSET + 1, _SKETCH_OFFSET - 1)
    keys[nonzero] = (np.ceil(logs).astype(np.int64) + _SKETCH_OFFSET) * np.sign(numbers[nonzero]).astype(np.int64)
    return keys


def _sketch_upper_bound(key: int) -> float:
    """The largest value of a sketch bucket (its upper end, exclusive for negative buckets)."""
    if key == 0:
        return 0.0
    if key > 0:
        return SKETCH_GAMMA ** (key - _SKETCH_OFFSET)
    return -(SKETCH_GAMMA ** (-key - _SKETCH_OFFSET - 1))


def _add_counts(counts: dict, keys, weights) -> None:
    for key, weight in zip(keys, weights, strict=True):
        counts[key] = counts.get(key, 0) + int(weight)


def _quantile_positions(total: int) -> list[float]:
    return [float(q) * (total - 1) for q in np.linspace(0, 1, QUANTILE_BUCKETS + 1)[1:-1]]


class NumericAccumulator:
    """One pass over a numeric feature's batches, mergeable with the accumulators of other parts.

    Counts, missing values, moments (Chan's parallel update), min/max, exact value counts
    while there are at most `EXACT_VALUES` distinct values, and a log-bucket sketch always.
    The summary's histogram buckets are cut at the deciles: numpy's linear-interpolated ones
    while the values are exact, else the sketch's bucket bounds.
    """

    def __init__(self):
        self.count = self.missing = self.present = 0
        self.mean = self.m2 = 0.0
        self.low = self.high = None
        self.values: dict[float, int] | None = {}
        self.sketch: dict[int, int] = {}

    def add(self, values: np.ndarray) -> NumericAccumulator:
        numbers = np.asarray(values, np.float64).ravel()
        present = numbers[~np.isnan(numbers)]
        part = NumericAccumulator()
        part.count, part.present = len(numbers), len(present)
        part.missing = part.count - part.present
        if part.present:
            part.mean = float(present.mean())
            part.m2 = float(((present - part.mean) ** 2).sum())
            part.low, part.high = float(present.min()), float(present.max())
            distinct, weights = np.unique(present, return_counts=True)
            if len(distinct) <= EXACT_VALUES:
                part.values = dict(zip(distinct.tolist(), weights.tolist(), strict=True))
            else:
                part.values = None
            keys, key_weights = np.unique(_sketch_keys(present), return_counts=True)
            part.sketch = dict(zip(keys.tolist(), key_weights.tolist(), strict=True))
        return self.merge(part)

    def merge(self, other: NumericAccumulator) -> NumericAccumulator:
        """Folds another part's accumulator into this one (the result does not depend on batch sizes)."""
        total = self.present + other.present
        if other.present:
            delta = other.mean - self.mean
            self.mean += delta * other.present / total
            self.m2 += other.m2 + delta * delta * self.present * other.present / total
            self.low = other.low if self.low is None else min(self.low, other.low)
            self.high = other.high if self.high is None else max(self.high, other.high)
        self.count += other.count
        self.missing += other.missing
        self.present = total
        if self.values is not None and other.values is not None:
            _add_counts(self.values, other.values.keys(), other.values.values())
            if len(self.values) > EXACT_VALUES:
                self.values = None
        else:
            self.values = None
        _add_counts(self.sketch, other.sketch.keys(), other.sketch.values())
        return self

    def _value_at(self, rank: int, ordered: list, cumulative: np.ndarray) -> float:
        return float(ordered[int(np.searchsorted(cumulative, rank, side="right"))])

    def edges(self) -> list[float]:
        """Inner bucket edges at the deciles (duplicates merged): len(edges) + 1 buckets."""
        if not self.present:
            return []
        source = self.values if self.values is not None else self.sketch
        ordered = sorted(source)
        cumulative = np.cumsum([source[key] for key in ordered])
        quantiles = []
        for position in _quantile_positions(self.present):
            below = math.floor(position)
            a = self._value_at(below, ordered, cumulative)
            if self.values is None:
                quantiles.append(_sketch_upper_bound(int(a)))
                continue
            b = self._value_at(min(below + 1, self.present - 1), ordered, cumulative)
            quantiles.append(float(a + (b - a) * (position - below)))
        return sorted(set(quantiles))

    def bucket_counts(self, edges: list[float]) -> list[int]:
        """How many values fall in each bucket (-inf, e1], ..., (e_n, inf) (sketch buckets: by their upper end)."""
        counts = [0] * (len(edges) + 1)
        if self.values is not None:
            items = self.values.items()
        else:
            items = ((_sketch_upper_bound(key), weight) for key, weight in self.sketch.items())
        bounds = np.asarray(edges, np.float64)
        for value, weight in items:
            counts[int(np.searchsorted(bounds, value, side="left"))] += weight
        return counts

    def to_dict(self) -> dict[str, Any]:
        """The accumulator's state as JSON (to merge it in another process)."""
        return {
            "count": self.count,
            "missing": self.missing,
            "present": self.present,
            "mean": self.mean,
            "m2": self.m2,
            "low": self.low,
            "high": self.high,
            "values": sorted(self.values.items()) if self.values is not None else None,
            "sketch": sorted(self.sketch.items()),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> NumericAccumulator:
        accumulated = cls()
        for name in ("count", "missing", "present", "mean", "m2", "low", "high"):
            setattr(accumulated, name, state[name])
        accumulated.values = {float(v): int(c) for v, c in state["values"]} if state["values"] is not None else None
        accumulated.sketch = {int(k): int(c) for k, c in state["sketch"]}
        return accumulated

    def summary(self) -> dict[str, Any]:
        edges = self.edges()
        std = math.sqrt(max(self.m2 / self.present, 0.0)) if self.present else None
        return {
            "count": int(self.count),
            "missing": int(self.missing),
            "mean": float(self.mean) if self.present else None,
            "std": std,
            "min": self.low,
            "max": self.high,
            "histogram": {"edges": edges, "counts": self.bucket_counts(edges)},
        }


class CategoricalAccumulator:
    """Exact counts of a categorical feature's values (up to `CATEGORY_LIMIT` distinct), mergeable."""

    def __init__(self):
        self.count = 0
        self.counts: dict[Any, int] = {}
        self.overflow = 0

    def add(self, values: np.ndarray) -> CategoricalAccumulator:
        part = CategoricalAccumulator()
        part.count = len(values)
        part.counts = dict(collections.Counter(values.tolist()))
        return self.merge(part)

    def merge(self, other: CategoricalAccumulator) -> CategoricalAccumulator:
        self.count += other.count
        self.overflow += other.overflow
        for value, count in other.counts.items():
            if value in self.counts:
                self.counts[value] += count
            elif len(self.counts) < CATEGORY_LIMIT:
                self.counts[value] = count
            else:
                self.overflow += count
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "counts": list(self.counts.items()), "overflow": self.overflow}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CategoricalAccumulator:
        accumulated = cls()
        accumulated.count, accumulated.overflow = state["count"], state["overflow"]
        accumulated.counts = {value: count for value, count in state["counts"]}
        return accumulated

    def summary(self) -> dict[str, Any]:
        top = sorted(self.counts.items(), key=lambda item: (-item[1], str(item[0])))
        kept = top[:TOP_VALUES]
        return {
            "count": int(self.count),
            "missing": int(self.counts.get("", 0)),
            "distinct": len(self.counts),
            "top": [[value if isinstance(value, str) else int(value), count] for value, count in kept],
            "other": int(sum(count for _, count in top[TOP_VALUES:]) + self.overflow),
        }


def words_per_value(values: np.ndarray) -> np.ndarray:
    return np.asarray([len(_WORD.findall(text)) for text in values], np.float64)


class TextAccumulator:
    """Count, empty values and the words-per-value distribution of a text feature, mergeable."""

    def __init__(self):
        self.count = self.empty = self.total_words = 0
        self.words = NumericAccumulator()

    def add(self, values: np.ndarray) -> TextAccumulator:
        words = words_per_value(values)
        self.count += len(values)
        self.empty += sum(1 for text in values if not text)
        self.total_words += int(words.sum())
        self.words.add(words)
        return self

    def merge(self, other: TextAccumulator) -> TextAccumulator:
        self.count += other.count
        self.empty += other.empty
        self.total_words += other.total_words
        self.words.merge(other.words)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "empty": self.empty,
            "total_words": self.total_words,
            "words": self.words.to_dict(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TextAccumulator:
        accumulated = cls()
        accumulated.count, accumulated.empty = state["count"], state["empty"]
        accumulated.total_words = state["total_words"]
        accumulated.words = NumericAccumulator.from_dict(state["words"])
        return accumulated

    def summary(self) -> dict[str, Any]:
        edges = self.words.edges()
        return {
            "count": int(self.count),
            "empty": int(self.empty),
            "mean_words": self.total_words / self.count if self.count else 0.0,
            "histogram": {"edges": edges, "counts": self.words.bucket_counts(edges)},
        }


class ImageAccumulator:
    """Exact counts of each uint8 pixel value (so exact moments, min and max), mergeable."""

    def __init__(self):
        self.shape: list[int] | None = None
        self.pixels = np.zeros(256, np.int64)

    def add(self, images: np.ndarray) -> ImageAccumulator:
        if self.shape is None:
            self.shape = list(images.shape[1:])
        self.pixels += np.bincount(np.asarray(images, np.uint8).ravel(), minlength=256)
        return self

    def merge(self, other: ImageAccumulator) -> ImageAccumulator:
        self.shape = self.shape or other.shape
        self.pixels += other.pixels
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "pixels": self.pixels.tolist()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ImageAccumulator:
        accumulated = cls()
        accumulated.shape = state["shape"]
        accumulated.pixels = np.asarray(state["pixels"], np.int64)
        return accumulated

    def summary(self) -> dict[str, Any]:
        total = int(self.pixels.sum())
        levels = np.arange(256, dtype=np.float64)
        mean = float((levels * self.pixels).sum() / total) if total else 0.0
        variance = float((((levels - mean) ** 2) * self.pixels).sum() / total) if total else 0.0
        seen = np.flatnonzero(self.pixels)
        return {
            "image_shape": self.shape or [],
            "dtype": "uint8",
            "pixel_mean": mean,
            "pixel_std": math.sqrt(variance),
            "pixel_min": int(seen[0]) if seen.size else 0,
            "pixel_max": int(seen[-1]) if seen.size else 0,
            "pixel_histogram": self.pixels.reshape(PIXEL_BUCKETS, -1).sum(axis=1).astype(int).tolist(),
        }


ACCUMULATORS = {
    NUMERIC: NumericAccumulator,
    CATEGORICAL: CategoricalAccumulator,
    TEXT: TextAccumulator,
    IMAGE: ImageAccumulator,
}


def accumulator(kind: str, state: dict[str, Any] | None = None):
    """A new, empty accumulator for a feature kind, or one restored from its `to_dict()`."""
    return ACCUMULATORS[kind]() if state is None else ACCUMULATORS[kind].from_dict(state)


def bucket_counts(values: np.ndarray, edges: list[float]) -> list[int]:
    """How many values fall in each bucket (-inf, e1], (e1, e2], ..., (e_n, inf)."""
    if not len(values):
        return [0] * (len(edges) + 1)
    positions = np.searchsorted(np.asarray(edges, np.float64), values, side="left")
    return np.bincount(positions, minlength=len(edges) + 1).astype(int).tolist()


def numeric_summary(values: np.ndarray) -> dict[str, Any]:
    return NumericAccumulator().add(values).summary()


def categorical_summary(values: np.ndarray) -> dict[str, Any]:
    return CategoricalAccumulator().add(values).summary()


def text_summary(values: np.ndarray) -> dict[str, Any]:
    return TextAccumulator().add(values).summary()


def pixel_histogram(images: np.ndarray) -> list[int]:
    """Counts of uint8 pixel values in `PIXEL_BUCKETS` equal buckets of 0-255."""
    buckets = np.bincount(np.asarray(images, np.uint8).ravel() // (256 // PIXEL_BUCKETS), minlength=PIXEL_BUCKETS)
    return buckets.astype(int).tolist()


def image_summary(images: np.ndarray) -> dict[str, Any]:
    return ImageAccumulator().add(images).summary()


def summarize(kind: str, values: np.ndarray) -> dict[str, Any]:
    """The summary of one feature's values (see the module doc)."""
    return accumulator(kind).add(values).summary()


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
        measured = words_per_value(values) if kind == TEXT else np.asarray(values, np.float64)
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
