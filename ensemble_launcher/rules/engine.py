"""The rules engine: task events in, metrics per group, rules fired, actions on the run.

    Ledger (observer) --submitted/handed_out/started/finished--> GroupMetrics, job-* rules
    the root's loop: turn() after each round of results --> metric rules, queued actions
                     tick() about ten times a second    --> heartbeat, interval rules, the end

Events are cheap: each updates the group's metrics and, only when a ``job-*`` rule
watches that trigger, queues a firing. Metric rules are looked at every 10 ms at most,
and checked when their metric changed; a count that moved by several since is checked
as if after each step (``count.sleep.success == 3`` fires when the count passes 3, even
from 2 to 5), so a rule fires as often as it would be checked event by event. Actions
run at the end of the turn, outside the ledger's own calls.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ensemble_launcher.ensemble import Task
from ensemble_launcher.ensemble.rules import (
    JOB_TRIGGERS,
    Action,
    ActionBudget,
    Rule,
    Steering,
    When,
    metric_name,
)
from ensemble_launcher.ensemble.task import UnbuildableTask
from ensemble_launcher.monitor import Counts
from ensemble_launcher.orchestrator.ledger import Ledger, Submission
from ensemble_launcher.rules.metrics import GroupMetrics
from ensemble_launcher.states import CANCELLED, NOT_RUN, SUCCEEDED, RunResult, never_ran

log = logging.getLogger("ensemble_launcher")

#: The count a final state adds to, besides ``finished``.
_OUTCOME_COUNT = {SUCCEEDED: "success", CANCELLED: "cancelled", NOT_RUN: ""}
#: Seconds between two checks of the metric rules while results flow.
_CHECK_EVERY = 0.01
#: Counts that only grow: a rule on one is checked at every value they pass.
_GROWING = frozenset({"submitted", "finished", "success", "failed", "cancelled"})


class TaskEvent(NamedTuple):
    """What a rule's custom action is told of the event that fired it."""

    trigger: str
    group: str
    task_id: str | None
    at: float
    state: str | None = None
    returncode: int | None = None
    reason: str | None = None


class FiringLog(Protocol):
    """Where firings are journaled (``store.RunStore``)."""

    def add_firing(self, at: float, rule: str, trigger: str, action: str,
                   detail: str) -> None: ...


@dataclass(slots=True, eq=False)
class _Armed:
    """A rule in force, with what is left of its action's repetitions."""

    rule: Rule
    budget: ActionBudget
    metric: str | None = None
    growing: bool = False
    seen: float | None = None
    """The metric's value when last checked: a rule is checked when it changes."""
    due: float = 0.0
    """Interval rules: when they fire next (monotonic)."""


@dataclass(slots=True, eq=False)
class _Firing:
    armed: _Armed
    event: TaskEvent
    action: Action | None = None


@dataclass(slots=True, eq=False)
class _Group:
    """The engine's side of one group: its counts (moved in place), the data of its
    series since the last turn, and the job rules that watch it."""

    counts: dict[str, int]
    watched: dict[str, list[_Armed]]
    durations: list[float] = field(default_factory=list)
    pendings: list[float] = field(default_factory=list)


@dataclass
class RunControls:
    """What actions may do to the run, given by whoever runs it."""

    terminate: Callable[[str], None]
    cancel_group: Callable[[str], int]
    journal: FiringLog | None = None
    stop_when_idle: Callable[[], None] | None = None
    """Closes the run's intake once nothing can happen any more (``el run``); None for a
    cluster, which runs until it is stopped."""
    resize: Callable[[int], str] | None = None
    """Asks a provider's pool for that many more blocks (fewer, when negative); None in
    a run without a provider, whose rules cannot grow or shrink (refused before the run)."""


@dataclass
class _Clock:
    heartbeat: float
    next_beat: float = field(default=math.inf)


def group_of(task: Task | UnbuildableTask) -> str:
    """A task's rules group: its ensemble, else its tag."""
    return task.ensemble or getattr(task, "tag", None) or "tasks"


class RulesEngine:
    """Fires ``steering``'s rules on the events of the run that ``ledger`` keeps."""

    def __init__(self, steering: Steering, ledger: Ledger, controls: RunControls) -> None:
        self.steering = steering
        self.metrics = GroupMetrics()
        self._ledger = ledger
        self._controls = controls
        self._clock = _Clock(steering.heartbeat)
        self._job_rules: dict[str, list[_Armed]] = {}
        self._metric_rules: dict[str, list[_Armed]] = {}
        """Per group, the metric rules that read one of its metrics."""
        self._timed: list[_Armed] = []
        self._start_rules: list[_Armed] = []
        self._groups: dict[str, _Group] = {}
        self._started_at: dict[str, float] = {}
        """Tasks the nodes reported started before their result: when."""
        self._checked = 0.0
        self._firings: list[_Firing] = []
        self._submissions: dict[str, int] = {}
        self.fired = 0
        self._began = False
        for rule in steering.rules:
            self.add_rule(rule)

    # -- rules -------------------------------------------------------------------------------

    def add_rule(self, rule: Rule) -> None:
        """A rule in force from now on (one of the run's, one a custom action returned, one
        a cluster's client added)."""
        label = rule.action.label
        if rule.action.name == "submit" and label not in self.steering.groups:
            raise ValueError(f"rule {rule.label}: submit names group {label!r}, which this "
                             f"run does not have (its groups: "
                             f"{', '.join(self.steering.groups) or 'none'})")
        if rule.trigger == "heartbeat" and not self._clock.heartbeat:
            raise ValueError(f"rule {rule.label}: a heartbeat rule needs a heartbeat, and "
                             f"this run has none")
        armed = _Armed(rule, ActionBudget(rule.action))
        trigger = rule.trigger
        if trigger in JOB_TRIGGERS:
            self._job_rules.setdefault(trigger, []).append(armed)
            for name, group in self._groups.items():
                group.watched = self._job_rules_of(name)
        elif trigger == "metric":
            assert rule.name is not None
            owner, key = _metric_group(rule.name)
            armed.metric = rule.name
            armed.growing = rule.name.startswith("count.") and key in _GROWING
            if armed.growing:
                armed.seen = self.metrics.get(rule.name) or 0
            self._metric_rules.setdefault(owner, []).append(armed)
            self._checked = 0.0
        elif trigger == "start":
            if self._began:
                self._fire(armed, TaskEvent("start", "", None, time.time()))
            else:
                self._start_rules.append(armed)
        else:
            period = self._clock.heartbeat if trigger == "heartbeat" else rule.interval
            armed.due = time.monotonic() + (period or math.inf)
            self._timed.append(armed)
        if trigger == "heartbeat" or (trigger == "metric" and self._clock.heartbeat):
            self._arm_heartbeat()

    def _arm_heartbeat(self) -> None:
        if self._clock.heartbeat and self._clock.next_beat == math.inf:
            self._clock.next_beat = time.monotonic() + self._clock.heartbeat

    def seed(self, counts: Counts) -> None:
        """Counts of the results recorded before this engine existed (a cluster's first
        rule comes while it runs)."""
        untagged = {"success": counts.done.get("tasks", 0),
                    "failed": counts.failed.get("tasks", 0),
                    "cancelled": counts.cancelled.get("tasks", 0),
                    "finished": counts.finished("tasks", this_run=True)}
        for (tag, state), n in counts.tagged.items():
            self.metrics.add(tag, "finished", n)
            untagged["finished"] -= n
            outcome = _OUTCOME_COUNT.get(state, "failed")
            if outcome:
                self.metrics.add(tag, outcome, n)
                untagged[outcome] -= n
        for buckets, keys in ((counts.done, ("finished", "success")),
                              (counts.failed, ("finished", "failed")),
                              (counts.cancelled, ("finished", "cancelled"))):
            for group, n in buckets.items():
                if group != "tasks":
                    for key in keys:
                        self.metrics.add(group, key, n)
        for key, n in untagged.items():
            if n:
                self.metrics.add("tasks", key, n)

    def begin(self) -> None:
        """The run starts: ``start`` rules fire (their actions run at once)."""
        self._began = True
        self._arm_heartbeat()
        now = time.time()
        for armed in self._start_rules:
            self._fire(armed, TaskEvent("start", "", None, now))
        self._start_rules.clear()
        self._run_firings()

    # -- events (the ledger's TaskObserver) ---------------------------------------------------

    def _group(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(self.metrics.counts_of(name),
                                                self._job_rules_of(name))
        return group

    def _job_rules_of(self, name: str) -> dict[str, list[_Armed]]:
        """The job rules that watch group ``name``, by trigger (most groups: none)."""
        watched: dict[str, list[_Armed]] = {}
        for trigger, armed_rules in self._job_rules.items():
            mine = [a for a in armed_rules if a.rule.name is None or a.rule.name == name]
            if mine:
                watched[trigger] = mine
        return watched

    def submitted(self, task: Task, at: float) -> None:
        name = task.ensemble or task.tag or "tasks"
        group = self._groups.get(name) or self._group(name)
        counts = group.counts
        counts["submitted"] += 1
        counts["pending"] += 1
        if group.watched:
            self._job_event(group, "job-depend", name, task, at)

    def handed_out(self, task: Task, at: float, fresh: bool) -> None:
        name = task.ensemble or task.tag or "tasks"
        group = self._groups.get(name) or self._group(name)
        if fresh:
            counts = group.counts
            counts["submitted"] += 1
            counts["pending"] += 1
        if group.watched:
            if fresh:
                self._job_event(group, "job-depend", name, task, at)
            self._job_event(group, "job-sched", name, task, at)

    def started(self, task: Task, at: float, entered: float) -> None:
        task_id = task.task_id
        if not entered or task_id in self._started_at:
            return
        self._started_at[task_id] = at
        name = task.ensemble or task.tag or "tasks"
        group = self._groups.get(name) or self._group(name)
        counts = group.counts
        counts["pending"] -= 1
        counts["running"] += 1
        group.pendings.append(at - entered)
        if group.watched:
            self._job_event(group, "job-run", name, task, at)

    def finished(self, task: Task | UnbuildableTask, result: RunResult,
                 entered: float) -> None:
        name = task.ensemble or getattr(task, "tag", None) or "tasks"
        group = self._groups.get(name) or self._group(name)
        counts = group.counts
        started = self._started_at.pop(task.task_id, None) if self._started_at else None
        ran = result.key >= 0
        if started is not None:
            counts["running"] -= 1
        elif entered:
            counts["pending"] -= 1
            if ran:
                started = result.start
                group.pendings.append(started - entered)
                if group.watched:
                    self._job_event(group, "job-run", name, task, started)
        if ran and started is not None:
            group.durations.append(result.end - started)
        counts["finished"] += 1
        state = result.state
        if state == SUCCEEDED:
            counts["success"] += 1
            outcome = "job-success"
        elif state == CANCELLED:
            counts["cancelled"] += 1
            outcome = "job-cancel"
        elif state == NOT_RUN:
            outcome = ""
        else:
            counts["failed"] += 1
            outcome = "job-fail"
        if group.watched:
            at = result.end
            self._job_event(group, "job-finish", name, task, at, result)
            if outcome:
                self._job_event(group, outcome, name, task, at, result)
            if ran:
                self._job_event(group, "job-cleanup", name, task, at, result)

    def _job_event(self, group: _Group, trigger: str, name: str,
                   task: Task | UnbuildableTask, at: float,
                   result: RunResult | None = None) -> None:
        armed_rules = group.watched.get(trigger)
        if not armed_rules:
            return
        event = TaskEvent(trigger, name, task.task_id, at,
                          *((result.state, result.returncode, result.reason)
                            if result is not None else ()))
        for armed in armed_rules:
            self._fire(armed, event)

    # -- the loop ----------------------------------------------------------------------------

    def turn(self) -> None:
        """After a round of results: the metric rules whose metric changed (looked at, at
        most every ``_CHECK_EVERY`` seconds: a busy loop turns many times a millisecond),
        then the actions fired."""
        now = time.monotonic()
        if now - self._checked >= _CHECK_EVERY:
            self._checked = now
            for name in self._groups:
                self._record_series(name)
            for armed_rules in self._metric_rules.values():
                for armed in armed_rules:
                    self._check_metric(armed)
        if self._firings:
            self._run_firings()

    def tick(self) -> None:
        """About ten times a second: time triggers, and the end of a run with nothing left."""
        now = time.monotonic()
        clock = self._clock
        if now >= clock.next_beat:
            clock.next_beat = now + clock.heartbeat
            self._heartbeat()
        for armed in self._timed:
            if now >= armed.due and not armed.budget.finished:
                period = clock.heartbeat if armed.rule.trigger == "heartbeat" else \
                    armed.rule.interval
                armed.due = now + (period or math.inf)
                self._fire(armed, TaskEvent(armed.rule.trigger, "", None, time.time()))
        self._checked = 0.0
        self.turn()
        if self._controls.stop_when_idle is not None and self._ledger.idle and \
                not self._firings and not self._can_fire_again():
            self._controls.stop_when_idle()

    def _record_series(self, name: str) -> None:
        group = self._groups.get(name)
        if group is None:
            return
        metrics = self.metrics
        if group.durations:
            metrics.series_of(name, "duration").add_many(group.durations)
            group.durations = []
        if group.pendings:
            metrics.series_of(name, "pending").add_many(group.pendings)
            group.pendings = []

    def _heartbeat(self) -> None:
        """As ensemble-python does: each task still pending adds its time so far to its
        group's pending series, and every metric rule is checked."""
        now = time.time()
        started = self._started_at
        waited: dict[str, list[float]] = {}
        for task, entered in self._ledger.waiting_since():
            if task.task_id not in started:
                name = task.ensemble or task.tag or "tasks"
                waited.setdefault(name, []).append(now - entered)
        for name, times in waited.items():
            self.metrics.series_of(name, "pending").add_many(times)
        for armed_rules in self._metric_rules.values():
            for armed in armed_rules:
                self._check_metric(armed, beat=True)

    def _can_fire_again(self) -> bool:
        """A time rule with repetitions left, or (with a heartbeat) a metric rule that
        holds now and has repetitions left: the run waits for it."""
        if any(not armed.budget.finished for armed in self._timed):
            return True
        if not self._clock.heartbeat:
            return False
        for armed_rules in self._metric_rules.values():
            for armed in armed_rules:
                if armed.budget.finished:
                    continue
                value = self.metrics.get(armed.metric or "")
                when = armed.rule.when
                if value is not None and (when is None or when.holds(value)):
                    return True
        return False

    def _check_metric(self, armed: _Armed, beat: bool = False) -> None:
        if armed.budget.finished:
            return
        value = self.metrics.get(armed.metric or "")
        if value is None:
            return
        when = armed.rule.when
        if armed.growing:
            seen = armed.seen or 0.0
            armed.seen = value
            chances = _passes(when, seen, value)
            if beat and (when is None or when.holds(value)):
                chances += 1
        elif value == armed.seen and not beat:
            return
        else:
            armed.seen = value
            chances = 1 if when is None or when.holds(value) else 0
        if chances:
            event = TaskEvent("metric", _metric_group(armed.metric or "")[0], None,
                              time.time(), reason=f"{armed.metric} = {value:g}")
            for _ in range(chances):
                if armed.budget.finished:
                    break
                self._fire(armed, event)

    # -- actions -----------------------------------------------------------------------------

    def _fire(self, armed: _Armed, event: TaskEvent) -> None:
        """One chance for the rule: its budget says whether the action runs (repetitions,
        backoff); it runs at the end of the turn."""
        if armed.budget.perform():
            self._firings.append(_Firing(armed, event))

    def _run_firings(self) -> None:
        while self._firings:
            firings, self._firings = self._firings, []
            for firing in firings:
                self._perform(firing.armed.rule, firing.action or firing.armed.rule.action,
                              firing.event)

    def _perform(self, rule: Rule, action: Action, event: TaskEvent) -> None:
        self.fired += 1
        detail = self._do(rule, action, event)
        label = rule.label
        log.info("rule %s (%s) fired: %s%s", label, event.trigger, action.name,
                 f" {detail}" if detail else "")
        journal = self._controls.journal
        if journal is not None:
            journal.add_firing(event.at, label, event.trigger, action.name, detail)
        if self.steering.debug and event.group:
            log.info("rules: metrics of %s: %s", event.group, self.metrics.summary(event.group))

    def _do(self, rule: Rule, action: Action, event: TaskEvent) -> str:
        name = action.name
        if name == "submit":
            assert action.label is not None
            return self.submit_group(action.label, _count(action.value))
        if name == "cancel":
            assert action.label is not None
            return f"{action.label}: {self._controls.cancel_group(action.label)} cancelled"
        if name == "terminate":
            self._controls.terminate(f"rule {rule.label}: terminate")
            return "the run stops"
        if name == "custom":
            return self._custom(rule, action, event)
        if name in ("grow", "shrink") and self._controls.resize is not None:
            count = _count(action.value) or 1
            return self._controls.resize(count if name == "grow" else -count)
        raise AssertionError(f"action {name!r} passed the checks at load")

    def submit_group(self, name: str, count: int | None = None) -> str:
        """Submit one more set of the group's tasks (``count`` overrides its count)."""
        group = self.steering.groups[name]
        submission = self._submissions.get(name, 0) + 1
        self._submissions[name] = submission
        tasks = group.tasks(count, submission)
        ledger = self._ledger
        for task in tasks:
            earlier = ledger.done_before(task.task_id)
            if earlier is not None:
                self._replay(task, earlier)
            elif isinstance(task, UnbuildableTask):
                ledger.refuse(task, task.reason)
            else:
                ledger.submit(Submission(task))
        return f"{name}: {len(tasks)} task(s)"

    def done_before(self, task: Task | UnbuildableTask, state: str) -> None:
        """A task of the stream that the run's earlier life finished (a resume)."""
        self._replay(task, state)

    def _replay(self, task: Task | UnbuildableTask, state: str) -> None:
        """A task this run's earlier life finished (a resume): not run again, but its
        events count as they did then, so that the rules take the same decisions."""
        now = time.time()
        if isinstance(task, Task):
            self.submitted(task, now)
        self.finished(task, never_ran(state, "earlier", "finished before the resume", now),
                      now)

    def _custom(self, rule: Rule, action: Action, event: TaskEvent) -> str:
        func = action.func
        assert func is not None
        try:
            outcome: Any = func(event=event, rule=rule, action=action, metrics=self.metrics,
                                handle=self)
        except Exception as exc:  # noqa: BLE001 - a user's function fails its firing only
            log.warning("rule %s: custom action %s raised %s: %s", rule.label,
                        action.label, type(exc).__name__, exc)
            return f"{action.label} raised {type(exc).__name__}: {exc}"
        if isinstance(outcome, Action):
            if outcome.name == "submit" and outcome.label not in self.steering.groups:
                log.warning("rule %s: custom action %s returned a submit of %r, which is "
                            "no group of this run", rule.label, action.label, outcome.label)
                return f"{action.label} -> submit of no group {outcome.label!r}"
            self._firings.append(_Firing(_Armed(rule, ActionBudget(outcome)), event, outcome))
            return f"{action.label} -> {outcome.name} {outcome.label or ''}".rstrip()
        if isinstance(outcome, Rule):
            try:
                self.add_rule(outcome)
            except ValueError as exc:
                log.warning("rule %s: custom action %s returned a rule refused: %s",
                            rule.label, action.label, exc)
                return f"{action.label} -> rule refused: {exc}"
            return f"{action.label} -> new rule {outcome.label}"
        return str(action.label)


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _metric_group(name: str) -> tuple[str, str]:
    """``count.G.key`` -> (G, key); ``stat.G-series`` -> (G, series)."""
    parsed = metric_name(name)
    return parsed.group, parsed.key


def _passes(when: When | None, before: float, after: float) -> int:
    """How many of the whole values in (before, after] a growing count takes satisfy
    ``when``: the rule is checked once at each."""
    low, high = int(before) + 1, int(after)
    if high < low:
        return 0
    if when is None:
        return high - low + 1
    op, bound = when.op, when.number
    if op == ">":
        low = max(low, math.floor(bound) + 1)
    elif op == ">=":
        low = max(low, math.ceil(bound))
    elif op == "<":
        high = min(high, math.ceil(bound) - 1)
    elif op == "<=":
        high = min(high, math.floor(bound))
    elif op in ("==", "="):
        return 1 if bound == int(bound) and low <= bound <= high else 0
    elif op == "!=":
        inside = bound == int(bound) and low <= bound <= high
        return high - low + 1 - inside
    return max(0, high - low + 1)


__all__ = ["RulesEngine", "RunControls", "TaskEvent", "group_of"]
