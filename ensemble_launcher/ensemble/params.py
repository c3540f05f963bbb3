"""Parameter values of a sweep: explicit lists, or expressions evaluated lazily.

An expression is a call such as ``"linspace(0, 10, 5)"``; it is parsed with :mod:`ast`
(never ``eval``) into a sequence that computes element ``i`` on demand, so that a
million-point sweep costs no memory until a task is made from it.

Every argument is checked when the expression is evaluated, so that a bad one is an
:class:`ExpressionError` saying which argument and why, never a traceback later. The
checks also make every element computable: numbers are finite, both ends of a range are
representable (the elements lie between them), and no sequence is longer than
:data:`MAX_VALUES`, the most that ``len()`` can count.
"""

from __future__ import annotations

import ast
import glob as _glob
import inspect
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ensemble_launcher.config.files import decode_utf8
from ensemble_launcher.values import BadValue, finite_float, whole_number

#: The most values one parameter, or one ensemble, can have (the limit of ``len()``).
MAX_VALUES = sys.maxsize


class ExpressionError(ValueError):
    """A parameter expression that cannot be parsed or evaluated."""


class LazySequence(Sequence):
    """A read-only sequence whose elements are made from their index by ``_at(i)`` when
    asked for, never stored: a sweep or an ensemble of 2^63 - 1 values indexes in O(1).
    Subclasses give ``__len__`` and ``_at``."""

    def __getitem__(self, index):  # type: ignore[override]
        n = len(self)
        if isinstance(index, slice):
            return [self._at(i) for i in range(*index.indices(n))]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return self._at(index)

    def _at(self, i: int) -> Any:
        raise NotImplementedError


class _Lazy(LazySequence):
    """A parameter's values: ``n`` of them, each computed from its index."""

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        head = ", ".join(repr(self[i]) for i in range(min(self._n, 3)))
        return f"<{type(self).__name__} [{head}{', ...' if self._n > 3 else ''}] n={self._n}>"


class Linspace(_Lazy):
    def __init__(self, start: float, stop: float, num: int, endpoint: bool = True) -> None:
        super().__init__(_count("num", num))
        self.start, self.stop = _finite("start", start), _finite("stop", stop)
        if not isinstance(endpoint, bool):
            raise ExpressionError(f"endpoint must be True or False, got {endpoint!r}")
        self.endpoint = endpoint
        div = (self._n - 1) if endpoint else self._n
        self.step = (self.stop - self.start) / div if div > 0 else 0.0
        if not math.isfinite(self.step):
            raise ExpressionError(f"the span from {start!r} to {stop!r} is too wide for a float")

    def _at(self, i: int) -> float:
        if self.endpoint and i == self._n - 1 and self._n > 1:
            return self.stop
        return self.start + i * self.step


class Logspace(_Lazy):
    def __init__(self, start: float, stop: float, num: int, base: float = 10.0) -> None:
        self.base = _finite("base", base)
        if self.base <= 0:
            raise ExpressionError(f"base must be > 0, got {base!r}")
        self._exp = Linspace(start, stop, num)
        super().__init__(len(self._exp))
        for name, exponent in (("start", self._exp.start), ("stop", self._exp.stop)):
            try:
                self.base ** exponent
            except (OverflowError, ZeroDivisionError):
                raise ExpressionError(f"base ** {name} = {base!r} ** {exponent!r} is too "
                                      "large for a float") from None

    def _at(self, i: int) -> float:
        return self.base ** self._exp[i]


class Geomspace(_Lazy):
    def __init__(self, start: float, stop: float, num: int) -> None:
        first, last = _finite("start", start), _finite("stop", stop)
        if first <= 0 or last <= 0:
            raise ExpressionError("start and stop must be > 0")
        self._log = Linspace(math.log(first), math.log(last), num)
        super().__init__(len(self._log))
        self.start, self.stop = first, last

    def _at(self, i: int) -> float:
        if i == 0:
            return self.start
        if i == self._n - 1:
            return self.stop
        return math.exp(self._log[i])


class Arange(_Lazy):
    """Like numpy.arange: integers when every argument is an integer."""

    def __init__(self, start: float, stop: float | None = None, step: float = 1) -> None:
        if stop is None:
            start, stop = 0, start
        numbers = [_real(name, v) for name, v in (("start", start), ("stop", stop),
                                                  ("step", step))]
        if step == 0:
            raise ExpressionError("step must not be 0")
        n: int
        if all(isinstance(v, int) for v in numbers):
            n = int(-((start - stop) // step))
        else:
            start, stop, step = (_finite(name, v) for name, v in (("start", start),
                                                                  ("stop", stop),
                                                                  ("step", step)))
            n = _ceil_count((stop - start) / step)
        super().__init__(_at_most(max(0, n)))
        self.start, self.step = start, step

    def _at(self, i: int) -> float:
        return self.start + i * self.step


def _checked(check: Callable[..., Any], name: str, value: Any, *args: Any) -> Any:
    """``check(name, value, *args)`` of :mod:`values`, a refusal as an ExpressionError."""
    try:
        return check(name, value, *args)
    except BadValue as exc:
        raise ExpressionError(str(exc)) from None


def _real(name: str, value: Any) -> int | float:
    """A number argument, as given: an int stays exact, however large."""
    return value if type(value) is int else _finite(name, value)


def _finite(name: str, value: Any) -> float:
    return _checked(finite_float, name, value)


def _ceil_count(quotient: float) -> int:
    if not math.isfinite(quotient):
        raise ExpressionError(f"it would make more than {MAX_VALUES} values")
    return math.ceil(quotient)


def _at_most(n: int) -> int:
    if n > MAX_VALUES:
        raise ExpressionError(f"it would make {approximately(n)} values; a sweep can have at "
                              f"most {MAX_VALUES}")
    return n


def approximately(n: int) -> str:
    """A count too large to print in full, e.g. ``1e+30`` (or ``about 10**400``, beyond
    what a float holds)."""
    if n.bit_length() < 1000:
        return f"{n:.3g}"
    return f"about 10**{int(n.bit_length() * math.log10(2))}"


def _count(name: str, num: Any) -> int:
    return _at_most(_checked(whole_number, name, num, 0))


def _range(start: int, stop: int | None = None, step: int = 1) -> range:
    if stop is None:
        start, stop = 0, start
    start, stop, step = (_checked(whole_number, name, value) for name, value in
                         (("start", start), ("stop", stop), ("step", step)))
    if step == 0:
        raise ExpressionError("step must not be 0")
    values = range(start, stop, step)
    try:
        len(values)
    except OverflowError:
        raise ExpressionError(f"it would make more than {MAX_VALUES} values") from None
    return values


def _lines(path: str) -> list[str]:
    """Non-empty lines of a text file, e.g. one input file name per line."""
    _check_path_text("path", path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ExpressionError(f"{path!r} is not a regular file")
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ExpressionError(f"cannot read {path!r}: {exc.strerror}") from None
    try:
        text = decode_utf8(data)
    except ValueError as exc:
        raise ExpressionError(f"{path!r} is {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _glob_sorted(pattern: str) -> list[str]:
    _check_path_text("pattern", pattern)
    matches = sorted(_glob.glob(pattern))
    if not matches:
        raise ExpressionError(f"glob pattern {pattern!r} matches no file")
    return matches


def _check_path_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ExpressionError(f"{name} must be a string, got {value!r}")
    if "\0" in value:
        raise ExpressionError(f"{name} must not contain a NUL character")


FUNCTIONS: dict[str, Callable[..., Sequence]] = {
    "linspace": Linspace,
    "logspace": Logspace,
    "geomspace": Geomspace,
    "arange": Arange,
    "range": _range,
    "lines": _lines,
    "glob": _glob_sorted,
}

#: How each function is called, as the messages show it.
USAGE = {
    "linspace": "linspace(start, stop, num, endpoint=True)",
    "logspace": "logspace(start, stop, num, base=10)",
    "geomspace": "geomspace(start, stop, num)",
    "arange": "arange([start, ]stop[, step])",
    "range": "range([start, ]stop[, step])",
    "lines": "lines('file')",
    "glob": "glob('pattern')",
}

_CALL_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\(")


def looks_like_expression(text: str) -> bool:
    """True for strings shaped like ``name(...)`` or ``[...]``: they must parse."""
    return bool(_CALL_RE.match(text)) or text.lstrip().startswith("[")


def reads_files(text: str) -> bool:
    """True for an expression whose values come from the file system (``lines``: file
    contents, ``glob``: file names) rather than from the ensemble file itself."""
    match = _CALL_RE.match(text)
    return match is not None and match.group(1) in ("lines", "glob")


def evaluate(text: str) -> Sequence:
    """Turn an expression string into a (lazy) sequence of values."""
    node = _parse(text)
    if isinstance(node, ast.List):
        return _literal(node)
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ExpressionError(_usage())
    name = node.func.id
    fn = FUNCTIONS.get(name)
    if fn is None:
        raise ExpressionError(f"unknown function {name!r}; {_usage()}")
    if any(k.arg is None for k in node.keywords):
        raise ExpressionError(f"{USAGE[name]}: ** arguments are not supported")
    args = [_literal(a) for a in node.args]
    kwargs = {k.arg: _literal(k.value) for k in node.keywords if k.arg}
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise ExpressionError(f"{USAGE[name]}: {exc}") from None
    try:
        return fn(*bound.args, **bound.kwargs)
    except ExpressionError as exc:
        raise ExpressionError(f"{name}: {exc}") from None


def _parse(text: str) -> ast.expr:
    """The expression's syntax tree. CPython's parser reports nesting it cannot handle as
    MemoryError or RecursionError, and a NUL or a 5,000-digit number as SyntaxError."""
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse expression: {exc.msg}") from None
    except (MemoryError, RecursionError):
        raise ExpressionError("cannot parse expression: it is nested too deeply") from None


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, MemoryError, RecursionError):
        raise ExpressionError(
            f"arguments must be literal numbers or strings, got {_source(node)!r:.80}"
        ) from None


def _source(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except RecursionError:
        return type(node).__name__


def _usage() -> str:
    return "expected a list or one of: " + ", ".join(USAGE.values())
