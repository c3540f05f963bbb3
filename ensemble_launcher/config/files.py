"""Reading structured files (JSON or YAML) and building config models from them.

pydantic is imported only where a model is built, so that reading an ensemble file (and
every process of the tree, which imports the ensemble layer) does not pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ensemble_launcher.errors import ConfigError, EnsembleFileError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound="BaseModel")


def read_structured_file(path: str | Path) -> Any:
    """Parse a JSON or YAML file, turning every parse failure into an EnsembleFileError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise EnsembleFileError(f"cannot read file: {exc.strerror}", file=str(path)) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise EnsembleFileError(f"malformed YAML{where}: {problem}", file=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EnsembleFileError(
            f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=str(path)
        ) from None


def validation_error_to_config_error(
    exc: ValidationError, model: type[BaseModel], source: str
) -> ConfigError:
    """Name the source, key and offending value of the first problems pydantic found."""
    lines = []
    for err in exc.errors()[:5]:
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            valid = ", ".join(sorted(model.model_fields))
            msg = f"unknown key; valid keys are: {valid}"
        lines.append(f"{source}: {model.__name__} key {key!r} = {value!r}: {msg}")
    more = len(exc.errors()) - 5
    if more > 0:
        lines.append(f"... and {more} more problem(s)")
    return ConfigError("\n".join(lines))


def build_model(model: type[M], data: Any, source: str) -> M:
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {model.__name__} keys, got {data!r}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error_to_config_error(exc, model, source) from None


def load_config_file(model: type[M], path: str | Path) -> M:
    """Build ``model`` from a JSON or YAML file, with errors that name the file and key."""
    return build_model(model, read_structured_file(path), str(path))
