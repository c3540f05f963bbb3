"""Reading structured files (JSON or YAML) and building config models from them.

pydantic is imported only where a model is built, so that reading an ensemble file (and
every process of the tree, which imports the ensemble layer) does not pay for it.

A file is refused, with its path and the place in it, when it is not UTF-8, does not
parse, repeats a key within one mapping (both parsers would silently keep the last),
nests deeper than :data:`MAX_DEPTH`, or holds a string that cannot be encoded (a lone
surrogate, which JSON can spell ``"\\ud800"``). Code that reads the data therefore never
meets a RecursionError, and task ids and commands can always be written down.
"""

from __future__ import annotations

import functools
import json
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ensemble_launcher.errors import ConfigError, EnsembleFileError, _short

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound="BaseModel")

#: The deepest nesting of mappings and lists a file may have; ensemble files need 4.
MAX_DEPTH = 100


def read_structured_file(path: str | Path) -> Any:
    """Parse a JSON or YAML file, turning every parse failure into an EnsembleFileError."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnsembleFileError(f"cannot read file: {exc.strerror}", file=source) from None
    try:
        text = decode_utf8(data)
    except ValueError as exc:
        raise EnsembleFileError(f"the file is {exc}", file=source) from None
    repeated: dict[int, Any] = {}
    if path.suffix.lower() in (".yaml", ".yml"):
        value = _parse_yaml(text, source)
    else:
        value = _parse_json(text, source, repeated)
    try:
        _height(value, 1, {}, repeated)
    except _Problem as problem:
        raise problem.error(source) from None
    return value


def decode_utf8(data: bytes) -> str:
    """``data`` as text (a UTF-8 byte-order mark is dropped); ValueError naming the line
    and column of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, "
                         f"column {column} cannot be decoded; save it as UTF-8") from None


def _parse_json(text: str, source: str, repeated: dict[int, Any]) -> Any:
    """``repeated`` gets, for each object that repeats a key, id(object) -> that key."""

    def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        mapping = dict(pairs)
        if len(mapping) < len(pairs):
            repeated[id(mapping)] = _first_repeated(key for key, _ in pairs)
        return mapping

    try:
        return json.loads(text, object_pairs_hook=unique_pairs)
    except json.JSONDecodeError as exc:
        raise EnsembleFileError(
            f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=source
        ) from None
    except RecursionError:
        raise _Problem(_too_deep()).error(source) from None
    except ValueError as exc:  # a number of more digits than int() reads
        raise EnsembleFileError(f"malformed JSON: {exc}", file=source) from None


def _parse_yaml(text: str, source: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
    except _RepeatedYamlKey as exc:
        raise EnsembleFileError(
            f"the key appears twice in one mapping, at lines {exc.first_line} and "
            f"{exc.line} (YAML would silently keep the last); remove one",
            file=source, key=str(exc.key)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise EnsembleFileError(f"malformed YAML{where}: {problem}", file=source) from None
    except RecursionError:
        raise _Problem(_too_deep()).error(source) from None
    except ValueError as exc:  # a number of more digits than int() reads, a bad date
        raise EnsembleFileError(f"malformed YAML: {exc}", file=source) from None


class _RepeatedYamlKey(Exception):
    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(key)
        self.key, self.first_line, self.line = key, first_line, line


@functools.cache
def _unique_key_loader() -> type:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """A SafeLoader that refuses a key written twice in one mapping. Keys brought in
        by a merge (``<<: *defaults``) may still be overridden, as YAML intends."""

        def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
            if isinstance(node, yaml.MappingNode):
                self._refuse_repeated_keys(node)
            return super().construct_mapping(node, deep)

        def _refuse_repeated_keys(self, node: yaml.MappingNode) -> None:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not key_node:
                    raise _RepeatedYamlKey(key, first.start_mark.line + 1,
                                           key_node.start_mark.line + 1)

    return UniqueKeyLoader


def _first_repeated(keys: Any) -> Any:
    seen = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


class _Problem(Exception):
    """A problem at a place in the data; ``path`` is filled in as the walk unwinds."""

    def __init__(self, reason: str, value: Any = None, has_value: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.value, self.has_value = reason, value, has_value
        self.path: list[Any] = []

    def error(self, source: str) -> EnsembleFileError:
        path, ensemble, reason = self.path, None, self.reason
        if len(path) >= 2 and path[0] == "ensembles":
            ensemble, path = str(path[1]), path[2:]
            if not path and reason == _REPEATED:
                reason = "two ensembles have this name (JSON would silently keep the last); " \
                         "rename one"
        if len(path) > 6:
            path = [*path[:3], "...", *path[-2:]]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        return EnsembleFileError(reason, file=source, ensemble=ensemble, key=key or None,
                                 value=self.value, has_value=self.has_value)


_REPEATED = "the key appears twice in one mapping (JSON would silently keep the last); remove one"


def _too_deep() -> str:
    return f"the data is nested more than {MAX_DEPTH} levels deep"


def _height(value: Any, depth: int, heights: dict[int, int], repeated: dict[int, Any]) -> int:
    """How deep ``value`` nests, checking its keys and strings on the way. Heights are
    kept per object (0 while it is being walked), so that data shared through YAML aliases
    is walked once and data that contains itself is found."""
    if isinstance(value, str):
        _check_encodable(value)
        return 0
    if not isinstance(value, (dict, list, tuple)):
        return 0
    known = heights.get(id(value))
    if known == 0:
        raise _Problem("the data contains itself (a YAML alias inside its own anchor)")
    if depth > MAX_DEPTH or (known is not None and depth + known - 1 > MAX_DEPTH):
        raise _Problem(_too_deep())
    if known is not None:
        return known
    if id(value) in repeated:
        problem = _Problem(_REPEATED)
        problem.path.append(repeated[id(value)])
        raise problem
    heights[id(value)] = 0
    items = value.items() if isinstance(value, dict) else enumerate(value)
    height = 0
    for key, child in items:
        try:
            if isinstance(key, str) and isinstance(value, dict):
                _check_encodable(key)
            height = max(height, _height(child, depth + 1, heights, repeated))
        except _Problem as problem:
            problem.path.insert(0, key)
            raise
    heights[id(value)] = height + 1
    return height + 1


def _check_encodable(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Problem(f"the text holds {text[exc.start]!r}, which cannot be encoded as "
                       "UTF-8 (a lone surrogate)", text, True) from None


def validation_error_to_config_error(
    exc: ValidationError, model: type[BaseModel], source: str
) -> ConfigError:
    """One line naming the source, and the key, value and problem of each of the first
    problems pydantic found (one per key: a union reports each member's complaint)."""
    problems: dict[str, str] = {}
    for err in exc.errors():
        key, value, message = _problem(err, model)
        problems.setdefault(key, f"key {_short(key)}: value {_short(value)}: {message}")
    shown = list(problems.values())[:3]
    more = len(problems) - len(shown)
    tail = f"; and {more} more problem(s)" if more > 0 else ""
    return ConfigError(f"{source}: {model.__name__} " + "; ".join(shown) + tail)


def _problem(err: Any, model: type[BaseModel]) -> tuple[str, Any, str]:
    """(key, value, message) of one pydantic error; the key is the field and any list
    index (``gpus.0``), without the union member pydantic appends."""
    from ensemble_launcher.config.models import FieldConflict

    cause = (err.get("ctx") or {}).get("error")
    loc, inner = _key_path(err["loc"], model)
    if err["type"] == "extra_forbidden":
        return (".".join(str(p) for p in err["loc"]), err.get("input"),
                f"unknown key; valid keys are: {', '.join(sorted(inner.model_fields))}")
    if isinstance(cause, FieldConflict):
        return ".".join([*loc, cause.key]), cause.value, cause.reason
    message = err["msg"].removeprefix("Value error, ").replace("\n", " ")
    return ".".join(loc) or "(top level)", err.get("input"), message


def _key_path(loc: tuple, model: type[BaseModel]) -> tuple[list[str], type[BaseModel]]:
    """The keys and list indexes of ``loc``, fields of nested models too
    (``provider.walltime``), without the union members pydantic puts in it; and the
    innermost model on the way (whose keys an unknown key is one of)."""
    keys: list[str] = []
    innermost, current = model, _model_in(model)
    for i, part in enumerate(loc):
        if isinstance(part, int):
            keys.append(str(part))
        elif current is not None and part in current.model_fields:
            keys.append(part)
            current = _model_in(current.model_fields[part].annotation)
            innermost = current or innermost
        elif i == 0:
            keys.append(str(part))
    return keys, innermost


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (``ProviderConfig | None`` holds ProviderConfig)."""
    from pydantic import BaseModel

    for member in (annotation, *typing.get_args(annotation)):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def build_model(model: type[M], data: Any, source: str) -> M:
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {model.__name__} keys, got "
                          f"{_short(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error_to_config_error(exc, model, source) from None


def load_config_file(model: type[M], path: str | Path) -> M:
    """Build ``model`` from a JSON or YAML file, with errors that name the file and key."""
    return build_model(model, read_structured_file(path), str(path))
