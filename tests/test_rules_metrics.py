"""Per-group metrics for event rules: what a rule reads by ensemble-python's dotted names.

Counts move with task events; each statistic agrees with numpy (exactly while a series is
small, within the sketch's rank error beyond); memory stays bounded however many values
come; a metric with no datum yet reads None, so no rule fires on it."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble_launcher.ensemble.rules import COUNT_KEYS, SERIES, STATS, MetricName, metric_name
from ensemble_launcher.errors import ConfigError
from ensemble_launcher.rules.metrics import BATCH, GroupMetrics

RANK_TOLERANCE = 0.02
"""Above the KLL sketch's rank error at k=200 (about 1.7%, 99th percentile)."""


def recorded(values, group="g", series="duration") -> GroupMetrics:
    metrics = GroupMetrics()
    for value in values:
        metrics.record(group, series, value)
    return metrics


def numpy_mad(values) -> float:
    values = np.asarray(values)
    return float(np.median(np.abs(values - np.median(values))))


def stats_of(metrics: GroupMetrics, group="g", series="duration") -> dict:
    return {stat: metrics.get(f"{stat}.{group}-{series}") for stat in STATS}


# -- counts --------------------------------------------------------------------------------


def test_counts_follow_task_events_up_and_down():
    metrics = GroupMetrics()
    for _ in range(3):
        metrics.add("sleep", "submitted")
        metrics.add("sleep", "pending")
    metrics.add("sleep", "pending", -1)
    metrics.add("sleep", "running")
    metrics.add("sleep", "running", -1)
    metrics.add("sleep", "finished")
    metrics.add("sleep", "success")
    metrics.add("sleep", "submitted", 5)

    assert metrics.get("count.sleep.submitted") == 8
    assert metrics.get("count.sleep.pending") == 2
    assert metrics.get("count.sleep.running") == 0
    assert metrics.get("count.sleep.finished") == 1
    assert metrics.get("count.sleep.success") == 1


def test_a_count_never_added_reads_none():
    metrics = GroupMetrics()
    metrics.add("sleep", "success")

    assert metrics.get("count.sleep.failed") is None
    assert metrics.get("count.other.success") is None


def test_unknown_count_keys_and_series_are_refused():
    metrics = GroupMetrics()
    with pytest.raises(ValueError, match="'done'"):
        metrics.add("g", "done")
    with pytest.raises(ValueError, match="'runtime'"):
        metrics.record("g", "runtime", 1.0)
    with pytest.raises(ValueError, match="'runtime'"):
        metrics.record_many("g", "runtime", [1.0])


# -- statistics ----------------------------------------------------------------------------


def test_each_stat_matches_numpy_on_a_small_series():
    values = [4, 2, 5, 3, 0, 4, 7.5, 1.25]
    stats = stats_of(recorded(values))

    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["variance"] == pytest.approx(np.var(values, ddof=1))
    assert stats["min"] == 0
    assert stats["max"] == 7.5
    assert stats["iqr"] == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))
    assert stats["mad"] == pytest.approx(numpy_mad(values))


def test_stats_stay_exact_up_to_a_full_batch():
    values = np.random.default_rng(1).exponential(2.0, BATCH).tolist()
    stats = stats_of(recorded(values))

    assert stats["iqr"] == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))
    assert stats["mad"] == pytest.approx(numpy_mad(values))


def test_one_value_has_variance_zero_as_river():
    stats = stats_of(recorded([2.5]))

    assert stats == {"mean": 2.5, "variance": 0.0, "min": 2.5, "max": 2.5, "iqr": 0.0,
                     "mad": 0.0}


def test_decimal_durations_keep_their_fractions():
    stats = stats_of(recorded([0.25, 0.5, 0.125, 0.375]))

    assert stats["mean"] == pytest.approx(0.3125)
    assert stats["min"] == 0.125
    assert stats["max"] == 0.5
    assert stats["iqr"] == pytest.approx(0.1875)
    assert 0 < stats["variance"] < 1


@pytest.mark.parametrize("draw", ["normal", "exponential", "lognormal"])
def test_stats_of_a_long_series_agree_with_numpy_within_the_rank_error(draw):
    rng = np.random.default_rng(7)
    values = {"normal": lambda: rng.normal(10.0, 2.0, 100_000),
              "exponential": lambda: rng.exponential(3.0, 100_000),
              "lognormal": lambda: rng.lognormal(0.0, 1.0, 100_000)}[draw]()
    stats = stats_of(recorded(values.tolist()))

    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert stats["variance"] == pytest.approx(values.var(ddof=1), rel=1e-9)
    assert stats["min"] == values.min()
    assert stats["max"] == values.max()
    tol = RANK_TOLERANCE
    narrowest = np.quantile(values, 0.75 - tol) - np.quantile(values, 0.25 + tol)
    widest = np.quantile(values, 0.75 + tol) - np.quantile(values, 0.25 - tol)
    assert narrowest <= stats["iqr"] <= widest
    within = np.mean(np.abs(values - np.median(values)) <= stats["mad"])
    assert abs(within - 0.5) <= 1.5 * tol


def test_spread_read_while_the_series_grows_stays_within_the_rank_error():
    """Rules read iqr and mad on every loop turn; each read is close to the data so far."""
    values = np.random.default_rng(3).normal(0.0, 1.0, 50_000)
    metrics = GroupMetrics()
    for count, value in enumerate(values.tolist(), 1):
        metrics.record("g", "pending", value)
        if count % 5_000 == 0:
            seen = values[:count]
            within = np.mean(np.abs(seen - np.median(seen)) <= metrics.get("mad.g-pending"))
            assert abs(within - 0.5) <= 1.5 * RANK_TOLERANCE
            iqr = metrics.get("iqr.g-pending")
            assert np.quantile(seen, 0.75 - RANK_TOLERANCE) - \
                np.quantile(seen, 0.25 + RANK_TOLERANCE) <= iqr
            assert iqr <= np.quantile(seen, 0.75 + RANK_TOLERANCE) - \
                np.quantile(seen, 0.25 - RANK_TOLERANCE)


def test_record_many_equals_recording_one_by_one():
    values = np.random.default_rng(5).exponential(1.0, 1_000).tolist()
    one_by_one = recorded(values[:300] + values[300:])
    at_once = recorded(values[:300])
    at_once.record_many("g", "duration", values[300:])

    expected = stats_of(one_by_one)
    got = stats_of(at_once)
    for stat in ("mean", "variance", "min", "max"):
        assert got[stat] == pytest.approx(expected[stat], rel=1e-9)
    assert got["iqr"] == pytest.approx(expected["iqr"], rel=0.1)


def test_memory_stays_bounded_for_a_million_values():
    metrics = GroupMetrics()
    for value in range(1_000_000):
        metrics.record("g", "duration", value * 0.001)

    series = metrics.series("g", "duration")
    assert series is not None and series.n == 1_000_000
    assert series.retained * 8 < 64 * 1024
    assert metrics.get("max.g-duration") == pytest.approx(999.999)
    assert metrics.get("iqr.g-duration") == pytest.approx(500.0, rel=2 * RANK_TOLERANCE)


# -- names ---------------------------------------------------------------------------------


def test_every_metric_reads_none_before_its_first_datum():
    metrics = GroupMetrics()
    metrics.add("g", "submitted")

    for series in SERIES:
        for stat in STATS:
            assert metrics.get(f"{stat}.g-{series}") is None
    for key in COUNT_KEYS:
        assert metrics.get(f"count.other.{key}") is None
    metrics.record("g", "pending", 1.0)
    assert metrics.get("mean.g-duration") is None
    assert metrics.get("mean.g-pending") == 1.0


def test_group_names_may_hold_dashes_and_dots():
    metrics = GroupMetrics()
    metrics.add("a.b-c", "success", 2)
    metrics.record("a.b-c", "duration", 3.0)
    metrics.record("x-y.z", "pending", 0.5)
    metrics.record("run-1.5", "pending", 1.5)

    assert metrics.get("count.a.b-c.success") == 2
    assert metrics.get("mean.a.b-c-duration") == 3.0
    assert metrics.get("max.x-y.z-pending") == 0.5
    assert metrics.get("min.run-1.5-pending") == 1.5
    assert metrics.get("mean.x-y.z-duration") is None
    assert metric_name("count.a.b-c.success") == MetricName("count", "a.b-c", "success")
    assert metric_name("mad.x-y.z-pending") == MetricName("mad", "x-y.z", "pending")


def test_get_refuses_a_name_that_is_no_metric():
    with pytest.raises(ConfigError, match="avg.sleep-duration"):
        GroupMetrics().get("avg.sleep-duration")


def test_as_dict_names_and_summary_list_what_has_data():
    metrics = GroupMetrics()
    metrics.add("sleep", "success")
    metrics.record("sleep", "duration", 2.0)
    metrics.record("sleep", "duration", 4.0)

    models = metrics.as_dict()
    assert models["count"] == {"sleep": {"success": 1}}
    assert models["mean"] == {"sleep-duration": 3.0}
    assert models["variance"] == {"sleep-duration": 2.0}
    assert set(models) == {"count", *STATS}
    assert sorted(metrics.names()) == sorted(
        ["count.sleep.success", *(f"{stat}.sleep-duration" for stat in STATS)])
    summary = metrics.summary("sleep")
    assert summary["count"] == {"success": 1}
    assert summary["duration"]["max"] == 4.0
    assert "pending" not in summary
    assert metrics.summary("other") == {}
