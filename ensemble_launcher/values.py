"""Checks of option values, shared by :class:`~ensemble_launcher.ensemble.Task`, ensemble
files and the config models, so that each kind of value is refused for the same reasons
and in the same words wherever it is given.

Each check returns the value normalized (``"0,2-3"`` -> ``[0, 2, 3]``) or raises
:class:`BadValue`; callers add where the value came from.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ensemble_launcher.errors import _short

#: More ids than any node has cores or GPUs: a longer list or range is a mistake, and
#: expanding "0-10000000000" would exhaust memory before any check could report it.
MAX_IDS = 1 << 16
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GPU_ID = re.compile(r"[A-Za-z0-9_.:/-]+")
#: Environment names already checked: a sweep's tasks repeat the same few names. Bounded,
#: so that a stream of tasks with ever new names does not grow it without end.
_GOOD_ENV_NAMES: set[str] = set()
_GOOD_ENV_NAMES_MAX = 4096


class BadValue(ValueError):
    """A value an option cannot take. ``reason`` says why without the value, for messages
    that show the value elsewhere (an ensemble file's key and value)."""

    def __init__(self, reason: str, value: Any) -> None:
        self.reason = reason
        super().__init__(f"{reason}, got {_short(value)}")


def whole_number(key: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int >= ``minimum``; a whole float (2.0) counts, true/false do not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_number(value) or isinstance(value, float) \
            or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise BadValue(f"{key} must be a whole number{bound}", value)
    return value


def finite_float(key: str, value: Any) -> float:
    """A number (not true/false) as a finite float."""
    if not is_number(value):
        raise BadValue(f"{key} must be a number", value)
    number = _as_float(value)
    if not math.isfinite(number):
        raise BadValue(f"{key} must be a finite number (a float: at most about 1.8e308)",
                       value)
    return number


def is_number(value: Any) -> bool:
    """An int or a float; true and false are not numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seconds(key: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite number of seconds > 0 (>= 0 with ``allow_zero``); NaN, inf and true/false
    are refused, since every comparison with NaN is false and would disable the check."""
    number = _as_float(value)
    if not (math.isfinite(number) and (number >= 0 if allow_zero else number > 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise BadValue(f"{key} must be a finite number of seconds {bound}", value)
    return number


def _as_float(value: Any) -> float:
    """A number as a float: NaN for what is not a number, inf for an int too large."""
    if not is_number(value):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf


def gpus_per_process(key: str, value: Any) -> int:
    try:
        return whole_number(key, value, 0)
    except BadValue:
        raise BadValue(f"{key} must be a whole number >= 0; to share a GPU between "
                       "processes, list its id several times in SystemConfig.gpus",
                       value) from None


def cpu_ids(key: str, value: Any) -> list[int]:
    """Distinct CPU ids >= 0 from a list of whole numbers or a string like ``"0,1,4-7"``."""
    if type(value) is list and len(value) <= MAX_IDS \
            and all(type(i) is int and i >= 0 for i in value) and len(set(value)) == len(value):
        return value
    if isinstance(value, str):
        value = parse_id_list(value, int, key)
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise BadValue(f"{key} must be a list of CPU ids or a string like \"0,1,4-7\"", value)
    _check_length(key, value)
    ids = [_cpu_id(key, v) for v in value]
    if len(set(ids)) != len(ids):
        twice = next(i for i, n in Counter(ids).items() if n > 1)
        raise BadValue(f"{key} lists CPU {twice} more than once", value)
    return ids


def _cpu_id(key: str, value: Any) -> int:
    if isinstance(value, str) and _is_digits(value.strip()):
        return int(value)
    try:
        return whole_number(key, value, 0)
    except BadValue:
        raise BadValue(f"{key}: {_short(value)} is not a CPU id (a whole number >= 0)",
                       value) from None


def gpu_ids(key: str, value: Any) -> list[str]:
    """GPU ids as strings, from a list or a string like ``"0,1"``; an id may repeat (two
    slots on one device). Ids are names (``"0"``, ``"0.1"``, ``"GPU-<uuid>"``), so floats
    and true/false are refused rather than turned into ``"1.5"`` or ``"True"``."""
    if isinstance(value, str):
        value = parse_id_list(value, str, key)
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise BadValue(f"{key} must be a list of GPU ids or a string like \"0,1\"", value)
    _check_length(key, value)
    if type(value) is list and all(type(g) is str and _GPU_ID.fullmatch(g) for g in value):
        return value
    return [gpu_id(key, v) for v in value]


def gpu_id(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and _GPU_ID.fullmatch(value):
        return value
    raise BadValue(f"{key}: {_short(value)} is not a GPU id (a whole number >= 0 or a name "
                   "like \"0.1\")", value)


def _check_length(key: str, ids: Sequence) -> None:
    if len(ids) > MAX_IDS:
        raise BadValue(f"{key} lists {len(ids)} ids, more than any node has ({MAX_IDS})", ids)


def path_option(key: str, value: Any) -> None:
    """A directory or file name: a non-empty string without NUL (which no path can hold)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise BadValue(f"{key} must be a string (a path)", value)
    if not value:
        raise BadValue(f"{key} must not be empty; leave it out for the default", value)
    if "\0" in value:
        raise BadValue(f"{key} must not contain a NUL character", value)


def is_env_name(name: Any) -> bool:
    """A name the environment can carry and a shell can expand: ``[A-Za-z_][A-Za-z0-9_]*``."""
    return isinstance(name, str) and _ENV_NAME.fullmatch(name) is not None


def env_name(name: Any) -> str:
    if name in _GOOD_ENV_NAMES:
        return name
    if not is_env_name(name):
        raise BadValue("env: a variable name must be letters, digits and _, not starting "
                       "with a digit", name)
    if len(_GOOD_ENV_NAMES) < _GOOD_ENV_NAMES_MAX:
        _GOOD_ENV_NAMES.add(name)
    return name


def env_value_text(name: str, value: Any) -> str:
    """An environment value: a string, or a number written as text. null, true/false, lists
    and mappings are refused: they would arrive as "None", "True" or a Python repr."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(_as_float(value)):
        return str(value)
    if not isinstance(value, str):
        raise BadValue(f"env: the value of {name} must be a string or a finite number", value)
    if "\0" in value:
        raise BadValue(f"env: the value of {name} must not contain a NUL character", value)
    return value


def environment(env: Any) -> dict[str, str]:
    """A Task's ``env`` as exec takes it: checked names and string values, numbers written
    as text, as in an ensemble file (``{"N": 4}`` -> ``{"N": "4"}``)."""
    if type(env) is dict and _GOOD_ENV_NAMES.issuperset(env) \
            and all(type(v) is str and "\0" not in v for v in env.values()):
        return env
    if not isinstance(env, Mapping):
        raise BadValue("env must be a mapping of names to strings or numbers", env)
    return {env_name(name): env_value_text(name, value) for name, value in env.items()}


def parse_id_list(text: str, kind: type, key: str = "ids") -> list:
    """``"0,1,4-7"`` -> ids; ranges only for integer ids, at most MAX_IDS of them."""
    ids: list = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if kind is int and "-" in part:
            ids.extend(_id_range(key, part))
        elif kind is int:
            if not _is_digits(part):
                raise BadValue(f"{key}: {_short(part)} is not a CPU id or a range like 4-7",
                               text)
            ids.append(int(part))
        else:
            ids.append(part)
        _check_length(key, ids)
    return ids


def _id_range(key: str, part: str) -> range:
    lo, _, hi = part.partition("-")
    if not (_is_digits(lo) and _is_digits(hi)) or int(lo) > int(hi):
        raise BadValue(f"{key}: {_short(part)} is not a range like 4-7 (low <= high)", part)
    if int(hi) - int(lo) >= MAX_IDS:
        raise BadValue(f"{key}: the range {_short(part)} has more ids than any node has "
                       f"({MAX_IDS})", part)
    return range(int(lo), int(hi) + 1)


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()
