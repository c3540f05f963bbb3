"""Tool schemas from Python signatures, and the elements of an ensemble call.

The SDK reads a tool's input schema from its function's signature. A tool's handler is
our own coroutine, so we give it a signature made from the user's function: the same
parameters for ``tool``, a list of each for ``ensemble_tool``. Checks happen when a tool
is registered, so that a function the SDK or an agent could not call is refused at once
with its name, not at the agent's first call.
"""

from __future__ import annotations

import inspect
import itertools
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from ensemble_launcher.errors import ConfigError

#: The keyword our handlers get the SDK's request context under (never a user's name:
#: it is refused in a tool's parameters).
CONTEXT = "el_mcp_context"
RELATIONS = ("one-to-one", "many-to-many")
_UNNAMED = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Signature:
    """A tool's parameters as its function takes them: their annotations resolved (a
    module with ``from __future__ import annotations`` holds them as strings), and which
    of them are positional-only (passed by position when the task runs)."""

    parameters: tuple[inspect.Parameter, ...]
    returns: Any
    positional: frozenset[str]

    def call_arguments(self, values: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``values`` by name as the function's ``args`` and ``kwargs``; a positional-only
        parameter left out takes its default, so that those after it keep their places."""
        args = tuple(values.get(p.name, p.default)
                     for p in self.parameters if p.name in self.positional)
        kwargs = {name: value for name, value in values.items() if name not in self.positional}
        return args, kwargs


def signature_of(fn: Callable[..., Any], tool_name: str) -> Signature:
    """The parameters of ``fn`` as a tool's schema can hold them, or ConfigError."""
    try:
        raw = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tool {tool_name!r}: cannot read the signature of {fn!r}: {exc}") \
            from None
    hints = _type_hints(fn)
    parameters = []
    for p in raw.parameters.values():
        check_parameter_name(p.name, tool_name)
        if p.kind in _UNNAMED:
            star = "*" if p.kind is inspect.Parameter.VAR_POSITIONAL else "**"
            raise ConfigError(f"tool {tool_name!r}: parameter {star}{p.name} has no name an "
                              "agent can pass it by; a tool takes named parameters only")
        parameters.append(p.replace(annotation=hints.get(p.name, p.annotation),
                                    kind=inspect.Parameter.KEYWORD_ONLY))
    positional = frozenset(p.name for p in raw.parameters.values()
                           if p.kind is inspect.Parameter.POSITIONAL_ONLY)
    return Signature(tuple(parameters), hints.get("return", raw.return_annotation), positional)


def check_parameter_name(name: str, tool_name: str) -> None:
    """The SDK refuses names that start with '_'; ours is taken by the request context."""
    if name.startswith("_") or name == CONTEXT:
        raise ConfigError(f"tool {tool_name!r}: a parameter cannot be named {name!r} (names "
                          f"starting with '_' and {CONTEXT!r} are not available to tools)")


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve stays as written
        return {}


def ensemble_parameters(signature: Signature) -> Signature:
    """Each parameter a list of what it took. One with a default may be left out: every
    element then gets the function's default (``None`` in the schema says so)."""
    listed = []
    for p in signature.parameters:
        item = Any if p.annotation is inspect.Parameter.empty else p.annotation
        default = inspect.Parameter.empty if p.default is inspect.Parameter.empty else None
        listed.append(p.replace(annotation=list[item], default=default))  # type: ignore[valid-type]
    return Signature(tuple(listed), list[Any], signature.positional)


def handler_for(name: str, description: str, signature: Signature, call: Handler) -> Handler:
    """A coroutine the SDK registers as the tool ``name``: its signature is ``signature``
    (the schema), and it hands ``call`` the request context and the arguments."""

    async def handler(**arguments: Any) -> Any:
        context = arguments.pop(CONTEXT)
        return await call(context, arguments)

    context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*signature.parameters, context], return_annotation=signature.returns)
    handler.__annotations__ = {p.name: p.annotation for p in signature.parameters
                               if p.annotation is not inspect.Parameter.empty}
    handler.__annotations__[CONTEXT] = Context
    if signature.returns is not inspect.Signature.empty:
        handler.__annotations__["return"] = signature.returns
    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = description
    return handler


def check_relation(relation: str, tool_name: str) -> str:
    if relation not in RELATIONS:
        raise ConfigError(f"ensemble tool {tool_name!r}: relation {relation!r} is not one of "
                          f"{', '.join(RELATIONS)}")
    return relation


def elements(lists: Mapping[str, Sequence[Any] | None], relation: str) -> list[dict[str, Any]]:
    """The calls an ensemble call makes, in input order: lists paired element by element
    (``one-to-one``, equal lengths) or crossed, the last varying fastest
    (``many-to-many``), as in ensemble files. A list left out (None) is not part of it."""
    given = {name: list(values) for name, values in lists.items() if values is not None}
    if not given:
        return []
    names = list(given)
    if relation == "many-to-many":
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*given.values())]
    lengths = {name: len(values) for name, values in given.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ToolError(f"the lists must have one length to be paired one-to-one: {shown}")
    return [dict(zip(names, values, strict=True)) for values in zip(*given.values(),
                                                                    strict=True)]
