"""Per-group metrics for event rules: counts and streaming statistics in bounded memory.

Rules read them by ensemble-python's dotted names, ``count.<group>.<key>`` and
``<stat>.<group>-<series>`` (``count.sleep.success``, ``mean.sleep-pending``). The root
updates them on every task event, so an update is a few dictionary and float operations:
counts are plain ints; mean and variance are Welford's running sums; min and max are two
floats. The spread statistics (iqr, mad) come from one KLL quantile sketch per series,
which holds about a thousand values however many it has seen; values reach it in
batches of ``BATCH``, so the sketch costs little per datum. While a series has at most
``BATCH`` values, all are kept and iqr and mad are exact (numpy's linear quantiles).

We keep ensemble-python's (river's) meanings: variance is the sample variance (ddof=1,
0.0 with one value, as ``river.stats.Var()``); mad is the median of the absolute
deviations from the median (river approximates it online, we give the batch value: exact
up to ``BATCH`` values, within the sketch's rank error beyond). Where river answers
before any datum (0.0, inf), ``get`` says None: no rule fires on a metric without data,
as in ensemble-python, where the model does not exist yet. numpy and datasketches are
imported only when a series first outgrows its batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from ensemble_launcher.ensemble.rules import COUNT_KEYS, SERIES, STATS, MetricName, metric_name
from ensemble_launcher.errors import ConfigError

BATCH = 256
"""Values a series buffers before one update of its sketch; up to this many, iqr and mad
are exact."""
SKETCH_K = 200
"""The KLL sketch's size: about 1.7% rank error (99th percentile), a few KB per series."""
_STALE_SHARE = 256
"""A sketched iqr or mad is recomputed once the count grows by more than 1/256 of itself:
new values move any rank by at most their share (0.4%), well within the sketch's error,
and recomputing costs some 10 us (the sketch re-sorts after an update)."""
_REFRESH = 0.1
"""Seconds a sketched iqr or mad is kept, at least, before it is computed again."""
_MAX_BISECTIONS = 200


def _quantile(ordered: list[float], q: float) -> float:
    """numpy's default (linear) ``q`` quantile of sorted values."""
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


class SeriesStats:
    """One series of one group (``sleep-duration``): running moments, extremes, and a
    bounded summary of its distribution for iqr and mad."""

    __slots__ = ("n", "mean", "_m2", "low", "high", "_batch", "_sketch", "_spread")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.low = math.inf
        self.high = -math.inf
        self._batch: list[float] = []
        self._sketch: Any = None
        self._spread: dict[str, tuple[int, float, float]] = {}
        """iqr and mad as last computed, with the count and the time they were computed
        at."""

    def add(self, value: float) -> None:
        n = self.n + 1
        self.n = n
        delta = value - self.mean
        mean = self.mean + delta / n
        self.mean = mean
        self._m2 += delta * (value - mean)
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value
        batch = self._batch
        batch.append(value)
        if len(batch) > BATCH:
            self._flush()

    def add_many(self, values: Iterable[float]) -> None:
        """Merges the values' moments into the running ones at once (Chan et al.)."""
        batch = list(values)
        count = len(batch)
        if not count:
            return
        batch_mean = math.fsum(batch) / count
        batch_m2 = math.fsum((value - batch_mean) ** 2 for value in batch)
        seen = self.n
        n = seen + count
        delta = batch_mean - self.mean
        self.mean += delta * count / n
        self._m2 += batch_m2 + delta * delta * seen * count / n
        self.n = n
        self.low = min(self.low, min(batch))
        self.high = max(self.high, max(batch))
        self._batch.extend(batch)
        if len(self._batch) > BATCH:
            self._flush()

    def _flush(self) -> None:
        """Moves the batch into the sketch in one update."""
        import numpy as np

        if self._sketch is None:
            from datasketches import kll_doubles_sketch

            self._sketch = kll_doubles_sketch(SKETCH_K)
        self._sketch.update(np.asarray(self._batch, dtype=np.float64))
        self._batch = []

    @property
    def variance(self) -> float:
        """The sample variance (ddof=1), 0.0 for one value: river's ``stats.Var()``."""
        return self._m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def retained(self) -> int:
        """How many values the series holds: all up to BATCH, then the sketch's sample
        and the batch, bounded whatever the count."""
        sketch = self._sketch
        return len(self._batch) + (sketch.num_retained if sketch is not None else 0)

    def iqr(self) -> float:
        """The 75th less the 25th percentile."""
        return self._spread_stat("iqr", self._exact_iqr, self._sketch_iqr)

    def mad(self) -> float:
        """The median of the absolute deviations from the median."""
        return self._spread_stat("mad", self._exact_mad, self._sketch_mad)

    def _spread_stat(self, stat: str, exact: Callable[[list[float]], float],
                     sketched: Callable[[Any], float]) -> float:
        """Computed once per count while exact; when sketched, again once the count grew by
        1/256 and at least ``_REFRESH`` seconds passed, since rules may read it on every
        loop turn and a pass over the sketch costs up to some 100 us."""
        cached = self._spread.get(stat)
        if cached is not None:
            seen, value, when = cached
            if self.n == seen:
                return value
            if self._sketch is not None and (self.n - seen <= seen // _STALE_SHARE or
                                             time.monotonic() - when < _REFRESH):
                return value
        if self._sketch is None:
            value = exact(sorted(self._batch))
        else:
            if self._batch:
                self._flush()
            value = sketched(self._sketch)
        self._spread[stat] = (self.n, value, time.monotonic())
        return value

    @staticmethod
    def _exact_iqr(ordered: list[float]) -> float:
        return _quantile(ordered, 0.75) - _quantile(ordered, 0.25)

    @staticmethod
    def _exact_mad(ordered: list[float]) -> float:
        median = _quantile(ordered, 0.5)
        return _quantile(sorted(abs(value - median) for value in ordered), 0.5)

    @staticmethod
    def _sketch_iqr(sketch: Any) -> float:
        return float(sketch.get_quantile(0.75) - sketch.get_quantile(0.25))

    def _sketch_mad(self, sketch: Any) -> float:
        """The least d that puts half the sketch's weight within [median - d, median + d],
        by bisection on its ranks (the sketch keeps no cheap list of its values)."""
        median = sketch.get_quantile(0.5)

        def within(d: float) -> float:
            return float(sketch.get_rank(median + d, True) - sketch.get_rank(median - d, False))

        if within(0.0) >= 0.5:
            return 0.0
        low, high = 0.0, max(self.high - median, median - self.low)
        for _ in range(_MAX_BISECTIONS):
            middle = (low + high) / 2
            if high - low <= 1e-9 * high or middle in (low, high):
                break
            if within(middle) >= 0.5:
                high = middle
            else:
                low = middle
        return high

    def value(self, stat: str) -> float | None:
        """``stat`` (one of STATS) of the series; None before any value."""
        if not self.n:
            return None
        if stat == "mean":
            return self.mean
        if stat == "variance":
            return self.variance
        if stat == "min":
            return self.low
        if stat == "max":
            return self.high
        if stat == "iqr":
            return self.iqr()
        if stat == "mad":
            return self.mad()
        raise ValueError(f"unknown statistic {stat!r}; statistics are {', '.join(STATS)}")

    def summary(self) -> dict[str, float | None]:
        return {stat: self.value(stat) for stat in STATS}


class GroupMetrics:
    """Every group's counts and series, read by dotted name. The root's loop owns it (it
    takes no lock)."""

    __slots__ = ("_counts", "_series", "_parsed")

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}
        self._series: dict[str, dict[str, SeriesStats]] = {series: {} for series in SERIES}
        """Series name, then group: ``record`` finds its stats in two lookups."""
        self._parsed: dict[str, MetricName] = {}

    def add(self, group: str, key: str, n: int = 1) -> None:
        """Moves ``group``'s count ``key`` (one of COUNT_KEYS) by ``n``; pending and
        running go down as tasks leave them."""
        counts = self._counts.get(group)
        if counts is not None and key in counts:
            counts[key] += n
        else:
            self._first_count(group, key, n)

    def counts_of(self, group: str) -> dict[str, int]:
        """``group``'s counts, every key from 0 once the group has an event: the engine
        moves them in place, a few per task event."""
        counts = self._counts.get(group)
        if counts is None or len(counts) < len(COUNT_KEYS):
            counts = self._counts[group] = {**dict.fromkeys(COUNT_KEYS, 0), **(counts or {})}
        return counts

    def series_of(self, group: str, series: str) -> SeriesStats:
        """``group``'s ``series``, made on first use."""
        try:
            return self._series[series][group]
        except KeyError:
            return self._new_series(group, series)

    def _first_count(self, group: str, key: str, n: int) -> None:
        if key not in COUNT_KEYS:
            raise ValueError(f"unknown count {key!r}; counts are {', '.join(COUNT_KEYS)}")
        self._counts.setdefault(group, {})[key] = n

    def record(self, group: str, series: str, value: float) -> None:
        """Adds one datum to ``group``'s ``series`` (one of SERIES)."""
        try:
            stats = self._series[series][group]
        except KeyError:
            stats = self._new_series(group, series)
        stats.add(value)

    def record_many(self, group: str, series: str, values: Iterable[float]) -> None:
        """Adds many data to ``group``'s ``series`` at once (a heartbeat's pending times)."""
        try:
            stats = self._series[series][group]
        except KeyError:
            stats = self._new_series(group, series)
        stats.add_many(values)

    def _new_series(self, group: str, series: str) -> SeriesStats:
        groups = self._series.get(series)
        if groups is None:
            raise ValueError(f"unknown series {series!r}; series are {', '.join(SERIES)}")
        stats = groups[group] = SeriesStats()
        return stats

    def get(self, name: str) -> float | None:
        """The metric ``name`` (``count.sleep.success``, ``mean.sleep-pending``); None
        while it has no datum. ConfigError for a name that is no metric."""
        parsed = self._parsed.get(name)
        if parsed is None:
            parsed = self._parse(name)
        if parsed.stat == "count":
            counts = self._counts.get(parsed.group)
            return None if counts is None else counts.get(parsed.key)
        stats = self._series[parsed.key].get(parsed.group)
        return None if stats is None else stats.value(parsed.stat)

    def _parse(self, name: str) -> MetricName:
        try:
            parsed = metric_name(name)
        except ValueError as exc:
            raise ConfigError(f"metric {name!r}: {exc}") from None
        self._parsed[name] = parsed
        return parsed

    def series(self, group: str, series: str) -> SeriesStats | None:
        """``group``'s ``series`` itself; None before its first datum."""
        return self._series[series].get(group)

    def names(self) -> list[str]:
        """The dotted name of every metric that has a value now."""
        names = [f"count.{group}.{key}" for group, counts in self._counts.items()
                 for key in counts]
        for series, groups in self._series.items():
            for group, stats in groups.items():
                if stats.n:
                    names.extend(f"{stat}.{group}-{series}" for stat in STATS)
        return names

    def summary(self, group: str) -> dict[str, dict[str, Any]]:
        """``group``'s metrics for a log line: {"count": {key: n}, series: {stat: value}}."""
        summary: dict[str, dict[str, Any]] = {}
        counts = self._counts.get(group)
        if counts:
            summary["count"] = dict(counts)
        for series, groups in self._series.items():
            stats = groups.get(group)
            if stats is not None and stats.n:
                summary[series] = stats.summary()
        return summary

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Nested as ensemble-python's ``models``: {"count": {group: {key: n}},
        "mean": {"<group>-<series>": value}, ...}."""
        models: dict[str, dict[str, Any]] = {stat: {} for stat in STATS}
        models["count"] = {group: dict(counts) for group, counts in self._counts.items()}
        for series, groups in self._series.items():
            for group, stats in groups.items():
                if stats.n:
                    for stat in STATS:
                        models[stat][f"{group}-{series}"] = stats.value(stat)
        return models
