"""collector.stats: the latency histogram and the stats snapshot."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from collections.abc import Callable

import pytest

from collector.stats import LatencyHistogram, Stats

BUCKET_GROWTH = 1.1  # buckets are ~10% wide


def true_quantile(samples: list[float], q: float) -> float:
    """The ceil(q * n)-th smallest sample: what the histogram's bucket should hold."""
    ordered = sorted(samples)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def histogram_of(samples: list[float]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for sample in samples:
        histogram.record(sample)
    return histogram


def uniform_ms(n: int) -> list[float]:
    return [i / 1000 for i in range(1, n + 1)]


def exponential(n: int) -> list[float]:
    return [-math.log(1 - (i + 0.5) / n) * 0.010 for i in range(n)]


def lognormal(n: int) -> list[float]:
    rng = random.Random(1234)
    return [rng.lognormvariate(math.log(0.002), 1.5) for _ in range(n)]


def bimodal(n: int) -> list[float]:
    return [0.001] * (n * 9 // 10) + [2.0] * (n // 10)


def wide_spread(n: int) -> list[float]:
    return [10 ** (-4 + 7 * i / n) for i in range(n)]  # 100 us .. ~1000 s


DISTRIBUTIONS: dict[str, Callable[[int], list[float]]] = {
    "uniform": uniform_ms,
    "exponential": exponential,
    "lognormal": lognormal,
    "bimodal": bimodal,
    "wide": wide_spread,
}


def test_empty_histogram_reports_zero() -> None:
    histogram = LatencyHistogram()
    assert histogram.quantile(0.5) == 0.0
    assert histogram.quantile(0.99) == 0.0
    assert histogram.max == 0.0
    assert histogram.total == 0


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_quantile_is_within_one_bucket_above_the_true_value(name: str, q: float) -> None:
    samples = DISTRIBUTIONS[name](2000)
    histogram = histogram_of(samples)
    true = true_quantile(samples, q)
    estimate = histogram.quantile(q)
    # the upper bound of the bucket that holds the true value
    assert true <= estimate
    assert estimate <= true * BUCKET_GROWTH * (1 + 1e-9)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_max_is_exact(name: str) -> None:
    samples = DISTRIBUTIONS[name](1000)
    histogram = histogram_of(samples)
    assert histogram.max == max(samples)
    assert histogram.quantile(1.0) == max(samples)
    assert histogram.total == len(samples)


def test_uniform_p50_and_p99_known_values() -> None:
    histogram = histogram_of(uniform_ms(1000))  # 1 ms .. 1000 ms
    assert 0.500 <= histogram.quantile(0.5) <= 0.550
    assert 0.990 <= histogram.quantile(0.99) <= 1.000  # capped by the max


def test_bimodal_p50_and_p99_land_in_their_modes() -> None:
    histogram = histogram_of(bimodal(1000))
    assert 0.001 <= histogram.quantile(0.5) <= 0.0011
    assert histogram.quantile(0.99) == 2.0


@pytest.mark.parametrize("value", [0.0, 1e-6, 1e-5, 0.0123, 0.5, 3.0, 7000.0])
def test_single_sample_quantiles_equal_the_sample(value: float) -> None:
    histogram = histogram_of([value])
    assert histogram.quantile(0.5) == value
    assert histogram.quantile(0.99) == value
    assert histogram.max == value


def test_weight_counts_as_that_many_samples() -> None:
    histogram = LatencyHistogram()
    histogram.record(0.005, weight=99)
    histogram.record(1.0)
    assert histogram.total == 100
    assert 0.005 <= histogram.quantile(0.5) <= 0.005 * BUCKET_GROWTH
    assert 0.005 <= histogram.quantile(0.99) <= 0.005 * BUCKET_GROWTH
    assert histogram.quantile(0.999) == 1.0
    assert histogram.max == 1.0


def test_bucket_bounds_are_about_ten_percent_apart_and_span_two_hours() -> None:
    bounds = LatencyHistogram().bounds
    assert bounds[0] == pytest.approx(1e-5)
    assert bounds[-1] >= 7200
    ratios = {round(b / a, 9) for a, b in itertools.pairwise(bounds)}
    assert ratios == {1.1}


# --- Stats.snapshot ------------------------------------------------------------------------


COUNTERS = {f.name for f in dataclasses.fields(Stats) if f.name not in ("latency", "started")}


def test_snapshot_keys() -> None:
    snapshot = Stats().snapshot()
    assert set(snapshot) == COUNTERS | {
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "uptime_s",
    }
    assert "latency" not in snapshot
    assert "started" not in snapshot
    for name in ("events_received", "events_stored", "events_rejected", "buffer_events"):
        assert name in snapshot


def test_snapshot_of_fresh_stats_is_all_zero() -> None:
    snapshot = Stats().snapshot()
    assert all(snapshot[name] == 0 for name in COUNTERS)
    assert snapshot["latency_p50_ms"] == 0
    assert snapshot["latency_p99_ms"] == 0
    assert snapshot["latency_max_ms"] == 0
    assert 0 <= snapshot["uptime_s"] < 60


def test_snapshot_values() -> None:
    stats = Stats()
    stats.events_stored = 7
    stats.buffer_bytes = 1234
    stats.latency.record(0.0123)
    stats.started -= 100
    snapshot = stats.snapshot()
    assert snapshot["events_stored"] == 7
    assert snapshot["buffer_bytes"] == 1234
    assert snapshot["latency_p50_ms"] == 12.3
    assert snapshot["latency_p99_ms"] == 12.3
    assert snapshot["latency_max_ms"] == 12.3
    assert 100 <= snapshot["uptime_s"] < 160
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_stats_are_slotted() -> None:
    stats = Stats()
    with pytest.raises(AttributeError):
        stats.no_such_counter = 1  # type: ignore[attr-defined]
