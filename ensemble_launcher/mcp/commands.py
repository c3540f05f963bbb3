"""Command templates as tools: ``"./sim --P {P} --T {T}"`` takes P and T and answers the
command's standard output.

Placeholders are those of ensemble files (``{name}``, ``{name:spec}``; ``${VAR}`` is left
to the shell), found by the same code. What an agent passes is data, never command text:
every value is quoted for /bin/sh as its place in the template requires, as values read
from files are in ensemble files, so an argument such as ``"1; rm -rf ~"`` reaches the
program as one argument, unchanged. A placeholder where no quoting is reliable
(backquotes, ``${...}``, a comment, a here-document) is refused when the tool is made.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ensemble_launcher.ensemble.spec import Template, hide_literal_braces
from ensemble_launcher.errors import ConfigError
from ensemble_launcher.mcp.tools import Signature, check_parameter_name

#: ``{name`` followed by what a placeholder cannot hold: a conversion, a lookup, or
#: nothing that closes it. Other braces (``awk '{print $1}'``, ``find -exec {} +``) are
#: the shell's.
_BROKEN = re.compile(r"(?<!\$)\{([A-Za-z_]\w*)(?:([!.\[])[^{}]*\}|(?![\w:}])(?![^{]*\}))")
_INTEGER_SPECS = frozenset("bcdoxXn")
_FLOAT_SPECS = frozenset("eEfFgG%")


@dataclass(frozen=True)
class CommandTemplate:
    """A template checked once, when its tool is registered."""

    text: str
    template: Template

    @classmethod
    def parse(cls, text: object, tool_name: str | None) -> CommandTemplate:
        if not tool_name:
            raise ConfigError(f"the command template {text!r} needs name=: a tool's name "
                              "cannot be made from a command")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"tool {tool_name!r}: the command template must be a "
                              f"non-empty string, not {text!r}")
        broken = _BROKEN.search(hide_literal_braces(text))
        if broken:
            why = ("conversions and lookups are not supported" if broken.group(2)
                   else "it is not closed by '}' right after the name")
            raise ConfigError(f"tool {tool_name!r}: the command template {text!r} has "
                              f"{broken.group()!r}, which is not a placeholder: {why}; "
                              f"write {{{broken.group(1)}}}")
        compiled = Template.compile(text)
        for name in compiled.names:
            check_parameter_name(name, tool_name)
        quoted = compiled.quoting(compiled.names)
        try:
            quoted.check_quotable("", ["x"] * len(quoted.holes))
        except ValueError as exc:
            raise ConfigError(f"tool {tool_name!r}: the command template {text!r}: "
                              f"{str(exc).replace('values read from files', 'values')}") \
                from None
        return cls(text, quoted)

    @property
    def names(self) -> list[str]:
        """The placeholders in the order they first appear: the tool's parameters."""
        return list(dict.fromkeys(name for name, _ in self.template.holes))

    def signature(self) -> Signature:
        """One parameter per placeholder, typed by its format spec (``{n:d}`` a whole
        number, ``{x:.3f}`` a number), else a string or a number."""
        specs = {name: spec for name, spec in reversed(self.template.holes)}
        parameters = tuple(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                              annotation=_annotation_for(specs[name]))
            for name in self.names)
        return Signature(parameters, str, frozenset())

    def render(self, values: Mapping[str, Any]) -> str:
        """The command line for ``values``; ValueError naming the placeholder and value
        that its format spec does not take."""
        for name, spec in self.template.holes:
            if spec:
                try:
                    format(values[name], spec)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{name}={values[name]!r} does not fit {{{name}:{spec}}} "
                                     f"of {self.text!r}: {exc}") from None
        return self.template.render(values)


def _annotation_for(spec: str) -> Any:
    kind = spec[-1:] if spec else ""
    if kind in _INTEGER_SPECS:
        return int
    if kind in _FLOAT_SPECS:
        return float
    return str | int | float
