"""Event rules: the records a rules file parses into (issue 12).

A rule joins a trigger (an event of a group's tasks, a metric, the start, a period) to an
action (submit or cancel a group, terminate, call a function). Parsing is data and lives
here, below the orchestrator; the engine that acts on these records lives in
``ensemble_launcher.rules``. Every check that can be made before the run is made here, so
that a bad rule is one error naming the file, the rule's key and the value, and never a
surprise an hour into a run.
"""

from __future__ import annotations

import importlib
import math
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ensemble_launcher.ensemble.task import Task, UnbuildableTask
from ensemble_launcher.errors import ConfigError, EnsembleFileError, _short
from ensemble_launcher.values import BadValue, _as_float, is_number, seconds, whole_number

JOB_TRIGGERS = ("job-depend", "job-sched", "job-run", "job-finish", "job-success",
                "job-fail", "job-cancel", "job-cleanup")
TRIGGERS = ("start", "metric", "heartbeat", "interval", *JOB_TRIGGERS)
ACTIONS = ("submit", "cancel", "terminate", "custom", "grow", "shrink")
COUNT_KEYS = ("submitted", "pending", "running", "finished", "success", "failed", "cancelled")
STATS = ("mean", "variance", "min", "max", "iqr", "mad")
SERIES = ("duration", "pending")

RULE_KEYS = ("trigger", "name", "when", "action", "interval")
ACTION_KEYS = ("name", "label", "value", "repetitions", "backoff")
#: Actions whose label names a group.
GROUP_ACTIONS = ("submit", "cancel")
#: Actions that change how many batch-job blocks a provider keeps (``value``: how many).
BLOCK_ACTIONS = ("grow", "shrink")


class _Problem(Exception):
    """What is wrong with one field of a rule: ``key`` is relative to the rule
    (``action.label``), so that the caller can say which rule of which file."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.key, self.value, self.reason = key, value, reason

    def within(self, prefix: str) -> _Problem:
        return _Problem(f"{prefix}.{self.key}", self.value, self.reason)

    def config_error(self, what: str) -> ConfigError:
        return ConfigError(f"{what} {self.key}: {self.reason}, got {_short(self.value)}")


# -- conditions and metric names ----------------------------------------------------------

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "=": operator.eq, "!=": operator.ne,
}
_CONDITION = re.compile(r"\s*(<=|>=|==|!=|<|>|=)?\s*"
                        r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")


class When:
    """The condition of a metric rule on the metric's value: a number (equality) or a
    comparison such as ``"> 0.5"``, ``">=1e-3"`` or ``"!= 2"``. Unlike ensemble-python's,
    it reads decimals and exponents, and refuses what it cannot read when the file loads."""

    __slots__ = ("number", "op", "text")

    def __init__(self, condition: str | int | float) -> None:
        if is_number(condition):
            op, number = "==", _as_float(condition)
        elif isinstance(condition, str) and (m := _CONDITION.fullmatch(condition)):
            op, number = m.group(1) or "==", float(m.group(2))
        else:
            raise ValueError("when must be a number or a comparison: one of < <= > >= == != "
                             "then a number, as in '> 0.5'")
        if not math.isfinite(number):
            raise ValueError("when must compare with a finite number")
        self.op = "==" if op == "=" else op
        self.number = number
        self.text = f"{self.op} {_number_text(number)}"

    def holds(self, value: float) -> bool:
        return _COMPARISONS[self.op](value, self.number)

    def __repr__(self) -> str:
        return f"When({self.text!r})"


def _number_text(number: float) -> str:
    return str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)


@dataclass(frozen=True, slots=True)
class MetricName:
    """A metric's dotted name taken apart: ``count.<group>.<key>`` (``stat`` "count",
    ``key`` in COUNT_KEYS) or ``<stat>.<group>-<series>`` (``key`` in SERIES)."""

    stat: str
    group: str
    key: str


def metric_name(text: str) -> MetricName:
    """Split a metric name. Group names may hold ``-`` and ``.``: for counts the LAST
    ``.`` ends the group; for statistics the first ``.`` ends the stat and the LAST ``-``
    ends the group. ValueError says which part is wrong."""
    if not isinstance(text, str):
        raise ValueError("a metric name must be a string")
    stat, dot, rest = text.partition(".")
    if stat == "count":
        group, dot, key = rest.rpartition(".")
        if not dot or not group or key not in COUNT_KEYS:
            raise ValueError(f"a count is named count.<group>.<key> with key one of "
                             f"{', '.join(COUNT_KEYS)}")
        return MetricName(stat, group, key)
    if not dot or stat not in STATS:
        raise ValueError(f"a metric is named count.<group>.<key> or <stat>.<group>-<series> "
                         f"with stat one of {', '.join(STATS)}")
    group, dash, series = rest.rpartition("-")
    if not dash or not group or series not in SERIES:
        raise ValueError(f"a statistic is named {stat}.<group>-<series> with series one of "
                         f"{', '.join(SERIES)}")
    return MetricName(stat, group, series)


# -- actions ------------------------------------------------------------------------------

@dataclass(eq=False, init=False)
class Action:
    """What a rule does when it fires. ``label`` names the group of submit and cancel, and
    the function of custom (a name defined by the file's ``custom:`` code, or
    ``package.module:function``); ``value`` overrides a submitted group's count.

    Takes ensemble-python's form too, ``Action({"name": "submit", "label": "echo"})``,
    which custom functions written for it return."""

    name: str
    label: str | None = None
    value: int | float | str | None = None
    repetitions: int = 1
    backoff: int | None = None
    func: Callable[..., Any] | None = field(default=None, repr=False)

    def __init__(self, name: str | Mapping[str, Any], label: str | None = None,
                 value: int | float | str | None = None, repetitions: int = 1,
                 backoff: int | None = None, func: Callable[..., Any] | None = None) -> None:
        try:
            if isinstance(name, Mapping):
                _refuse_fields_beside_mapping(label, value, repetitions, backoff, func)
                self._fill_from(name, None)
            else:
                self._fill(name, label, value, repetitions, backoff, func, None)
        except _Problem as problem:
            raise problem.config_error("action") from None

    def _fill_from(self, data: Mapping[str, Any], custom: ModuleType | None) -> None:
        _refuse_unknown_keys(data, ACTION_KEYS, "an action")
        if "name" not in data:
            raise _Problem("name", None, "an action needs a name, one of " + ", ".join(ACTIONS))
        self._fill(data["name"], data.get("label"), data.get("value"),
                   data.get("repetitions", 1), data.get("backoff"), None, custom)

    def _fill(self, name: Any, label: Any, value: Any, repetitions: Any, backoff: Any,
              func: Any, custom: ModuleType | None) -> None:
        if name not in ACTIONS:
            raise _Problem("name", name, "unknown action; the actions are " + ", ".join(ACTIONS))
        self.name = name
        self.repetitions = _whole("repetitions", repetitions, 1)
        self.backoff = None if backoff is None else _whole("backoff", backoff, 0)
        self.func = None
        self.label = label
        self.value = value
        if name in GROUP_ACTIONS:
            self._check_group_action()
        elif name == "terminate":
            _refuse_set("label", label, "terminate takes no label")
            _refuse_set("value", value, "terminate takes no value")
        elif name in BLOCK_ACTIONS:
            _refuse_set("label", label, f"{name} takes no label (value: how many blocks)")
            self.value = _whole("value", 1 if value is None else value, 1)
        else:
            self._resolve_custom(func, custom)

    def _check_group_action(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise _Problem("label", self.label, f"{self.name} needs a label naming a group")
        if self.name == "submit":
            self.value = None if self.value is None else _whole("value", self.value, 1)
        else:
            _refuse_set("value", self.value, "cancel takes no value")

    def _resolve_custom(self, func: Any, custom: ModuleType | None) -> None:
        if self.value is not None and not (is_number(self.value) or isinstance(self.value, str)):
            raise _Problem("value", self.value, "a custom action's value must be a number or "
                           "a string")
        if func is not None:
            if not callable(func):
                raise _Problem("func", func, "func must be callable")
            self.func = func
            self.label = self.label or getattr(func, "__qualname__", repr(func))
            return
        if not isinstance(self.label, str) or not self.label:
            raise _Problem("label", self.label, "custom needs a label naming its function: "
                           "one the file's custom: code defines, or package.module:function")
        self.func = _custom_function(self.label, custom)


def _custom_function(label: str, custom: ModuleType | None) -> Callable[..., Any]:
    """The function a custom action's label names, imported now so that a typo or a module
    that does not import is an error before the run."""
    if ":" in label:
        module_name, _, path = label.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of a user's module
            raise _Problem("label", label, f"cannot import module {module_name!r}: "
                           f"{type(exc).__name__}: {exc}") from None
        for part in path.split("."):
            found = getattr(found, part, None)
        where = f"module {module_name!r}"
    else:
        found = getattr(custom, label, None) if custom is not None else None
        where = "the file's custom: code" if custom is not None else \
            "this file, which has no custom: code (name a module's function as " \
            "package.module:function)"
    if found is None:
        raise _Problem("label", label, f"custom function {label!r} is not defined in {where}")
    if not callable(found):
        raise _Problem("label", label, f"{label!r} in {where} is a "
                       f"{type(found).__name__}, not a function")
    return found


def _refuse_fields_beside_mapping(*fields: Any) -> None:
    if fields != (None, None, 1, None, None):
        raise _Problem("name", "<mapping>", "give an action as one mapping or as fields, "
                       "not both")


def _refuse_set(key: str, value: Any, reason: str) -> None:
    if value is not None:
        raise _Problem(key, value, reason)


def _refuse_unknown_keys(data: Mapping[Any, Any], known: Collection[str], what: str) -> None:
    for key in data:
        if key not in known:
            raise _Problem(str(key), data[key], f"unknown key in {what}; its keys are "
                           + ", ".join(known))


def _whole(key: str, value: Any, minimum: int) -> int:
    try:
        return whole_number(key, value, minimum)
    except BadValue as exc:
        raise _Problem(key, value, exc.reason) from None


class ActionBudget:
    """How often one action may still run, spent as ensemble-python's ``perform()``
    spends it: each firing costs a repetition; with a backoff of N, after each run the
    next N firings are skipped. Mutable, one per rule, so the Action stays a plain record."""

    __slots__ = ("backoff", "counter", "repetitions")

    def __init__(self, action: Action) -> None:
        self.repetitions = action.repetitions
        self.backoff = action.backoff
        self.counter = 0

    def perform(self) -> bool:
        """Whether the action runs at this firing (and spend it if so)."""
        if self.finished:
            return False
        if self.backoff is not None and self.backoff >= 0:
            if self.counter > 0:
                self.counter -= 1
                return False
            self.counter = self.backoff
        self.repetitions -= 1
        return True

    @property
    def finished(self) -> bool:
        return self.repetitions <= 0


# -- rules --------------------------------------------------------------------------------

@dataclass(eq=False, init=False)
class Rule:
    """A trigger and the action it fires. ``name`` is the group a ``job-*`` rule watches
    (None: every group), the metric a ``metric`` rule reads, else a label for logs;
    ``when`` is a metric rule's condition; ``interval`` the period of an ``interval`` rule.

    Takes ensemble-python's form too: ``Rule({"trigger": ..., "action": {...}})``."""

    trigger: str
    action: Action
    name: str | None = None
    when: When | None = None
    interval: float | None = None

    def __init__(self, trigger: str | Mapping[str, Any], action: Action | Mapping[str, Any]
                 | None = None, name: str | None = None, when: When | str | float | None = None,
                 interval: float | None = None) -> None:
        try:
            if isinstance(trigger, Mapping):
                if (action, name, when, interval) != (None, None, None, None):
                    raise _Problem("trigger", "<mapping>", "give a rule as one mapping or as "
                                   "fields, not both")
                self._fill_from(trigger, None)
            else:
                self._fill(trigger, action, name, when, interval, None)
        except _Problem as problem:
            raise problem.config_error("rule") from None

    @property
    def label(self) -> str:
        """What logs and the journal call this rule."""
        return self.name or self.trigger

    def _fill_from(self, data: Mapping[str, Any], custom: ModuleType | None) -> None:
        _refuse_unknown_keys(data, RULE_KEYS, "a rule")
        for key, what in (("trigger", "a trigger"), ("action", "an action")):
            if key not in data:
                raise _Problem(key, None, f"a rule needs {what}")
        self._fill(data["trigger"], data["action"], data.get("name"), data.get("when"),
                   data.get("interval"), custom)

    def _fill(self, trigger: Any, action: Any, name: Any, when: Any, interval: Any,
              custom: ModuleType | None) -> None:
        if trigger not in TRIGGERS:
            raise _Problem("trigger", trigger, "unknown trigger; the triggers are "
                           + ", ".join(TRIGGERS))
        self.trigger = trigger
        self.action = _action_of(action, custom)
        if name is not None and (not isinstance(name, str) or not name):
            raise _Problem("name", name, "a rule's name must be a non-empty string")
        self.name = name
        self.when = self._condition(when)
        self.interval = self._period(interval)

    def _condition(self, when: Any) -> When | None:
        if self.trigger == "metric":
            if self.name is None:
                raise _Problem("name", None, "a metric rule needs a name: the metric it reads, "
                               "as in count.<group>.success or mean.<group>-duration")
            try:
                metric_name(self.name)
            except ValueError as exc:
                raise _Problem("name", self.name, str(exc)) from None
        if when is None or isinstance(when, When):
            if when is not None and self.trigger != "metric":
                raise _Problem("when", when.text, "when applies only to metric rules")
            return when
        if self.trigger != "metric":
            raise _Problem("when", when, "when applies only to metric rules")
        try:
            return When(when)
        except ValueError as exc:
            raise _Problem("when", when, str(exc)) from None

    def _period(self, interval: Any) -> float | None:
        if self.trigger != "interval":
            _refuse_set("interval", interval, "interval applies only to trigger interval")
            return None
        if interval is None:
            raise _Problem("interval", None, "trigger interval needs interval: SECONDS")
        try:
            return seconds("interval", interval)
        except BadValue as exc:
            raise _Problem("interval", interval, exc.reason) from None


def _action_of(action: Any, custom: ModuleType | None) -> Action:
    if isinstance(action, Action):
        return action
    if not isinstance(action, Mapping):
        raise _Problem("action", action, "a rule's action must be a mapping with a name")
    made = Action.__new__(Action)
    try:
        made._fill_from(action, custom)
    except _Problem as problem:
        raise problem.within("action") from None
    return made


def _rule_from(data: Any, custom: ModuleType | None) -> Rule:
    if not isinstance(data, Mapping):
        raise _Problem("", data, "a rule must be a mapping with a trigger and an action")
    rule = Rule.__new__(Rule)
    rule._fill_from(data, custom)
    return rule


def _check_references(rule: Rule, groups: Collection[str], heartbeat: float,
                      heartbeat_key: str) -> None:
    """What a rule names must exist: its group, its metric's group, its action's group;
    a heartbeat rule needs a heartbeat."""
    if rule.trigger in JOB_TRIGGERS and rule.name is not None and rule.name not in groups:
        raise _Problem("name", rule.name, f"{rule.trigger} rules watch a group; no group has "
                       f"this name (the groups: {_listing(groups)})")
    if rule.trigger == "metric":
        group = metric_name(rule.name).group  # type: ignore[arg-type]
        if group not in groups:
            raise _Problem("name", rule.name, f"no group {group!r}; the groups: "
                           f"{_listing(groups)}")
    if rule.trigger == "heartbeat" and not heartbeat > 0:
        raise _Problem("trigger", rule.trigger, f"a heartbeat rule needs {heartbeat_key}: "
                       "SECONDS > 0")
    if rule.action.name in GROUP_ACTIONS and rule.action.label not in groups:
        raise _Problem("action.label", rule.action.label, f"no group has this name (the "
                       f"groups: {_listing(groups)})")


def _listing(groups: Collection[str]) -> str:
    names = sorted(groups)
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def parse_rules(items: Any, source: str | None, groups: Collection[str], *,
                custom: ModuleType | None = None, heartbeat: float = 0.0,
                heartbeat_key: str = "heartbeat", key: str = "rules") -> list[Rule]:
    """A file's ``rules`` list as Rules, every one checked against the file's ``groups``.
    The first problem is an EnsembleFileError naming the file, the rule's key (as in
    ``rules[2].action.label``) and the value."""
    if not isinstance(items, list):
        raise EnsembleFileError("rules must be a list of rules, each a mapping with a "
                                "trigger and an action", file=source, key=key, value=items,
                                has_value=True)
    rules = []
    for index, item in enumerate(items):
        try:
            rule = _rule_from(item, custom)
            _check_references(rule, groups, heartbeat, heartbeat_key)
        except _Problem as problem:
            where = f"{key}[{index}]" + (f".{problem.key}" if problem.key else "")
            raise EnsembleFileError(problem.reason, file=source, key=where,
                                    value=problem.value, has_value=True) from None
        rules.append(rule)
    return rules


def check_rule(rule: Rule, groups: Collection[str], heartbeat: float = 0.0) -> None:
    """The checks of :func:`parse_rules` that need the run, for a rule added while it goes
    (returned by a custom action, or added to a live cluster): ConfigError if it names a
    group, metric or heartbeat the run does not have."""
    try:
        _check_references(rule, groups, heartbeat, "a heartbeat")
    except _Problem as problem:
        raise problem.config_error(f"rule {rule.label!r}:") from None


# -- the plan of a run --------------------------------------------------------------------

#: Makes one submission of a group: (count or None for the group's own, submission
#: number) -> its tasks.
TaskMaker = Callable[[int | None, int], "list[Task | UnbuildableTask]"]


@dataclass(eq=False)
class Group:
    """Tasks that rules submit, cancel and measure together: one ensemble of our files, or
    the jobs of one name in an ensemble-python file. ``samples`` holds one task of each
    shape the group makes, so that the resources it needs are checked before the run."""

    name: str
    default_count: int
    make: TaskMaker = field(repr=False)
    samples: list[Task] = field(default_factory=list, repr=False)

    def tasks(self, count: int | None, submission: int) -> list[Task | UnbuildableTask]:
        """The tasks of one submission (numbered from 1 per group) of ``count`` tasks
        (None: the group's own count). Each has ``ensemble`` set to the group's name."""
        return self.make(count, submission)


@dataclass
class Steering:
    """What rules do to a run: the rules, the groups they may submit, and the groups held
    back from the start (a submit action names them, so they run when it fires)."""

    rules: list[Rule]
    groups: dict[str, Group]
    held: frozenset[str]
    heartbeat: float = 0.0
    debug: bool = False
    source: str | None = None


def held_groups(rules: Collection[Rule]) -> frozenset[str]:
    """The groups a submit action names: these wait for it instead of starting at once."""
    return frozenset(rule.action.label for rule in rules  # type: ignore[misc]
                     if rule.action.name == "submit")
