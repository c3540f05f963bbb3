"""Parameter values of a sweep: explicit lists, or expressions evaluated lazily.

An expression is a call such as ``"linspace(0, 10, 5)"``; it is parsed with :mod:`ast`
(never ``eval``) into a sequence that computes element ``i`` on demand, so that a
million-point sweep costs no memory until a task is made from it.
"""

from __future__ import annotations

import ast
import glob as _glob
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class ExpressionError(ValueError):
    """A parameter expression that cannot be parsed or evaluated."""


class _Lazy(Sequence):
    """A read-only sequence whose elements come from ``_at(i)``."""

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ExpressionError(f"number of values must be >= 0, got {n}")
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._at(index)

    def _at(self, i: int) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        head = ", ".join(repr(self[i]) for i in range(min(self._n, 3)))
        return f"<{type(self).__name__} [{head}{', ...' if self._n > 3 else ''}] n={self._n}>"


class Linspace(_Lazy):
    def __init__(self, start: float, stop: float, num: int, endpoint: bool = True) -> None:
        super().__init__(_count(num))
        self.start, self.stop, self.endpoint = float(start), float(stop), endpoint
        div = (num - 1) if endpoint else num
        self.step = (self.stop - self.start) / div if div > 0 else 0.0

    def _at(self, i: int) -> float:
        if self.endpoint and i == self._n - 1 and self._n > 1:
            return self.stop
        return self.start + i * self.step


class Logspace(_Lazy):
    def __init__(self, start: float, stop: float, num: int, base: float = 10.0) -> None:
        super().__init__(_count(num))
        self._exp = Linspace(start, stop, num)
        self.base = float(base)

    def _at(self, i: int) -> float:
        return self.base ** self._exp[i]


class Geomspace(_Lazy):
    def __init__(self, start: float, stop: float, num: int) -> None:
        if start <= 0 or stop <= 0:
            raise ExpressionError("geomspace needs start and stop > 0")
        super().__init__(_count(num))
        self._log = Linspace(math.log(start), math.log(stop), num)
        self.start, self.stop = float(start), float(stop)

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
        if step == 0:
            raise ExpressionError("arange step must not be 0")
        super().__init__(max(0, math.ceil((stop - start) / step)))
        self.start, self.step = start, step

    def _at(self, i: int) -> float:
        return self.start + i * self.step


def _count(num: Any) -> int:
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise ExpressionError(f"the number of values must be a whole number >= 0, got {num!r}")
    return num


def _range(*args: Any) -> range:
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise ExpressionError(f"range takes whole numbers, got {args!r}")
    return range(*args)


def _lines(path: str) -> list[str]:
    """Non-empty lines of a text file, e.g. one input file name per line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ExpressionError(f"cannot read {path!r}: {exc.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _glob_sorted(pattern: str) -> list[str]:
    matches = sorted(_glob.glob(pattern))
    if not matches:
        raise ExpressionError(f"glob pattern {pattern!r} matches no file")
    return matches


FUNCTIONS: dict[str, Callable[..., Sequence]] = {
    "linspace": Linspace,
    "logspace": Logspace,
    "geomspace": Geomspace,
    "arange": Arange,
    "range": _range,
    "lines": _lines,
    "glob": _glob_sorted,
}

_CALL_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\(")


def looks_like_expression(text: str) -> bool:
    """True for strings shaped like ``name(...)`` or ``[...]``: they must parse."""
    return bool(_CALL_RE.match(text)) or text.lstrip().startswith("[")


def evaluate(text: str) -> Sequence:
    """Turn an expression string into a (lazy) sequence of values."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse expression: {exc.msg}") from None
    if isinstance(node, ast.List):
        return _literal(node)
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ExpressionError(_usage())
    fn = FUNCTIONS.get(node.func.id)
    if fn is None:
        raise ExpressionError(f"unknown function {node.func.id!r}; {_usage()}")
    args = [_literal(a) for a in node.args]
    kwargs = {k.arg: _literal(k.value) for k in node.keywords if k.arg}
    try:
        return fn(*args, **kwargs)
    except TypeError as exc:
        raise ExpressionError(f"bad arguments for {node.func.id}: {exc}") from None


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ExpressionError(
            f"arguments must be literal numbers or strings, got {ast.unparse(node)!r}"
        ) from None


def _usage() -> str:
    return ("expected a list or one of: linspace(start, stop, num), logspace(start, stop, num), "
            "geomspace(start, stop, num), arange(start, stop, step), range(start, stop[, step]), "
            "lines('file'), glob('pattern')")
