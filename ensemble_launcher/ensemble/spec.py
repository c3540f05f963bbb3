"""One ensemble definition -> a validated, lazily indexed sequence of Tasks.

    {"nnodes": 1, "ppn": 1, "cmd_template": "./sim -a {a} -b {b}",
     "a": "linspace(0, 10, 5)", "b": [1, 2], "relation": "many-to-many"}

Keys that are not options are parameters. Every parameter must be used by a template
(``cmd_template``, ``env`` values, ``run_dir``, ``stdout_file``, ``stderr_file``), and
every ``{placeholder}`` must name a parameter, so that a typo is an error and not a
silently ignored key. Task ``i`` is computed from ``i`` alone (mixed-radix digits for
``many-to-many``), so the ensemble is never held as a list and ids are stable.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import itertools
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from ensemble_launcher.ensemble import params, preflight
from ensemble_launcher.ensemble.programs import (
    DOUBLE,
    SHELL_SYNTAX,
    SINGLE,
    WORD,
    direct_program,
    hole_contexts,
    quote_for,
    resolve_program,
)
from ensemble_launcher.ensemble.task import Task, UnbuildableTask, rendered_task
from ensemble_launcher.errors import EnsembleFileError, EnsembleLauncherError, _short
from ensemble_launcher.values import (
    BadValue,
    cpu_ids,
    env_name,
    env_value_text,
    gpu_ids,
    gpus_per_process,
    path_option,
    seconds,
    whole_number,
)

RELATIONS = ("one-to-one", "many-to-many")
#: Options whose values templates may use, e.g. "mpiexec -n {ppn} ./sim".
OPTION_PLACEHOLDERS = ("nnodes", "ppn", "ngpus_per_process")
TEMPLATED_OPTIONS = ("cmd_template", "run_dir", "stdout_file", "stderr_file")
OPTIONS = frozenset(
    {
        "nnodes", "ppn", "cmd_template", "relation", "cpu_affinity", "gpu_affinity",
        "ngpus_per_process", "env", "run_dir", "timeout", "stdout_file", "stderr_file",
        "estimated_runtime", "retries",
    }
)

# ``{name}`` or ``{name:format}``; ``${NAME}`` is left for the shell.
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_]\w*)(?::([^{}]*))?\}")
#: A doubled brace (a literal one, as in ``str.format``) or a placeholder, left to right.
_PIECE = re.compile(r"(\{\{|\}\})|" + _PLACEHOLDER.pattern)
_FIRST_WORD = re.compile(r"[ \t\r\n]*([^ \t\r\n]*)")
#: Words /bin/sh runs itself (builtins and keywords): no file on PATH need exist for them.
_SHELL_WORDS = frozenset({
    ".", ":", "[", "alias", "break", "case", "cd", "command", "continue", "eval", "exec",
    "exit", "export", "for", "getopts", "if", "read", "readonly", "return", "set", "shift",
    "test", "times", "trap", "type", "ulimit", "umask", "unset", "until", "wait", "while",
})
#: The types a parameter value may have; a YAML date is written as the user wrote it.
_SCALARS = (str, int, float, bool, datetime.date)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, _SCALARS)


def _encodable(text: str) -> bool:
    """Whether ``text`` can reach a program: as UTF-8, or as the bytes of a file name that
    Python decoded with surrogateescape (what glob() returns for a name not in UTF-8)."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _did_you_mean(name: str, *choices: Collection[Any]) -> str:
    candidates = [c for group in choices for c in group if isinstance(c, str) and c != name]
    close = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _near_miss(name: str, where: str, text: str) -> str:
    """Why ``text`` mentions ``{name`` without being a placeholder for it, or ""."""
    for m in re.finditer(r"\$?\{\s*" + re.escape(name) + r"(?!\w)", text):
        end = text.find("}", m.end())
        written = text[m.start():end + 1][:40] if end >= 0 else m.group()
        after = text[m.end():m.end() + 1]
        if text[m.start() - 1:m.start()] == "{":
            written = text[m.start() - 1:end + 2][:40] if end >= 0 else m.group()
            why = "doubled braces are a literal brace, as in str.format; write {" + name + "}"
        elif m.group().startswith("$"):
            why = "a shell expansion, left for the shell; write {" + name + "} for the parameter"
        elif after == "!" and end >= 0:
            why = "conversions (!r, !s, !a) are not supported; write {" + name + "}"
        elif after in (".", "[") and end >= 0:
            why = "attribute and index lookups are not supported; write {" + name + "}"
        elif (m.group()[1:2].isspace() or after.isspace()) and end >= 0:
            why = "a placeholder has no spaces inside its braces; write {" + name + "}"
        elif after == ":" and end >= 0:
            why = "a format spec cannot hold braces; write {" + name + ":format}"
        else:
            written = m.group()
            why = "it is not closed by '}' right after the name"
        return f"; {where} has {written!r}, which is not a placeholder: {why}"
    return ""


def hide_literal_braces(text: str) -> str:
    """``text`` with each doubled brace (a literal one) blanked, place for place, so that
    a search for mistyped placeholders does not take ``{{print`` for one."""
    return _PIECE.sub(lambda m: "  " if m.group(1) else m.group(), text)


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``{param}`` holes, split once so rendering is a join.

    ``quoted`` holds, per hole, the shell quoting state it stands in when its values must
    be quoted for /bin/sh (values read from files), else None (see :meth:`quoting`)."""

    literals: tuple[str, ...]
    holes: tuple[tuple[str, str], ...]
    quoted: tuple[str | None, ...] = ()

    @classmethod
    def compile(cls, text: str) -> Template:
        """Split ``text`` at its placeholders; ``{{`` and ``}}`` are literal braces, as in
        ``str.format``, so that ``awk 'BEGIN {{print {a}}}'`` renders ``{print 1}``."""
        literals, holes, current, pos = [], [], [], 0
        for m in _PIECE.finditer(text):
            current.append(text[pos:m.start()])
            pos = m.end()
            if m.group(1):
                current.append(m.group(1)[0])
            else:
                literals.append("".join(current))
                current = []
                holes.append((m.group(2), m.group(3) or ""))
        current.append(text[pos:])
        literals.append("".join(current))
        return cls(tuple(literals), tuple(holes))

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.holes}

    def quoting(self, names: Collection[str]) -> Template:
        """This template with the values of ``names`` quoted for /bin/sh, each as the quotes
        around its hole require (none, '...' or "..."), so that the program receives each
        value as one argument, unchanged (see :meth:`check_quotable` for where that is
        impossible)."""
        marks = tuple(name in names for name, _ in self.holes)
        if not any(marks):
            return self
        return replace(self, quoted=self._contexts(marks, ["x"] * len(self.holes)))

    def check_quotable(self, name: str, texts: Sequence[str]) -> None:
        """ValueError when, with the other holes filled with ``texts``, a value to quote
        would stand where no quoting is safe (``name``: whose value moved it there, if
        any)."""
        marks = [c is not None for c in self.quoted]
        for (hole, _), context in zip(self.holes, self._contexts(marks, texts), strict=True):
            if context not in (None, WORD, SINGLE, DOUBLE):
                cause = f" once {{{name}}} is filled in" if name else ""
                raise ValueError(
                    f"{{{hole}}} takes values read from files and stands inside {context}"
                    f"{cause}, where they cannot be quoted safely; use it as a plain "
                    "argument, or in '...' or \"...\"")

    def _contexts(self, marks: Sequence[bool], texts: Sequence[str]) -> tuple[str | None, ...]:
        """The quoting state at each marked hole, the other holes filled with ``texts``."""
        pieces, current = [], [self.literals[0]]
        for mark, text, lit in zip(marks, texts, self.literals[1:], strict=True):
            if mark:
                pieces.append("".join(current))
                current = [lit]
            else:
                current += (text, lit)
        pieces.append("".join(current))
        found = iter(hole_contexts(pieces))
        return tuple(next(found) if mark else None for mark in marks)

    def render(self, values: Mapping[str, Any]) -> str:
        if not self.holes:
            return self.literals[0]
        texts = [format(values[name], spec) if spec else str(values[name])
                 for name, spec in self.holes]
        if self.quoted:
            texts = self._quote(texts)
        out = [self.literals[0]]
        for text, lit in zip(texts, self.literals[1:], strict=True):
            out.append(text)
            out.append(lit)
        return "".join(out)

    def _quote(self, texts: list[str]) -> list[str]:
        """Quote the values that must be. The states found by :meth:`quoting` assume the
        other values hold no shell syntax; one that does (a quote of the user's own) may
        move them, so they are found again from the values at hand."""
        contexts = self.quoted
        if any(c is None and not SHELL_SYNTAX.isdisjoint(t)
               for c, t in zip(contexts, texts, strict=True)):
            contexts = self._contexts([c is not None for c in contexts], texts)
        return [t if c is None else quote_for(c, t)
                for c, t in zip(contexts, texts, strict=True)]

    def written_values_to_check(self, values_of: Callable[[str], Iterator[Any]]) \
            -> Iterator[tuple[str, list[str]]]:
        """Each value with shell syntax of a hole not quoted, in that hole, the other holes
        neutral: what :meth:`check_quotable` must see, so that a quote in a user's value
        cannot move a value read from a file out of its quotes."""
        neutral = ["x"] * len(self.holes)
        for i, ((name, spec), context) in enumerate(zip(self.holes, self.quoted, strict=True)):
            if context is None:
                for value in values_of(name):
                    text = format(value, spec)
                    if not SHELL_SYNTAX.isdisjoint(text):
                        yield name, [*neutral[:i], text, *neutral[i + 1:]]


class EnsembleSpec(params.LazySequence):
    """A validated ensemble: ``len(spec)`` tasks, ``spec[i]`` builds task ``i``.

    ``will_run`` (a resume's) says which tasks will run; the checks of this host look at
    those only, since a finished task may have lost what it needed (its run_dir)."""

    def __init__(self, name: str, definition: Any, source: str | None = None, *,
                 will_run: preflight.RunFilter | None = None) -> None:
        self.name = name
        self.source = source
        self._will_run = will_run
        self._check_name()
        if not isinstance(definition, Mapping):
            self._fail(f"an ensemble must be a mapping of keys, got {type(definition).__name__}",
                       value=definition)
        self._definition = dict(definition)
        self._parse_options()
        self._parse_parameters()
        self._size = self._count_tasks()
        self._check_values_format()
        self._quote_values_from_files()
        if self._size:
            self._check_host()
            self._check_renders()
        self._will_run = None

    # -- parsing ---------------------------------------------------------------------------

    def _fail(self, message: str, key: str | None = None, value: Any = None) -> NoReturn:
        raise EnsembleFileError(message, file=self.source, ensemble=self.name, key=key,
                                value=value, has_value=key is not None)

    def _check_name(self) -> None:
        """The name starts every task id, which the journal, the status file and the
        progress lines write down: it must be printable text that UTF-8 can encode."""
        if not isinstance(self.name, str) or not self.name:
            self._fail("an ensemble name must be a non-empty string")
        try:
            self.name.encode("utf-8")
        except UnicodeEncodeError:
            self._fail("an ensemble name must be text that UTF-8 can encode; it holds a lone "
                       "surrogate")
        if not self.name.isprintable():
            self._fail("an ensemble name must not contain control characters (a newline, "
                       "a tab, a NUL, ...)")

    def _parse_options(self) -> None:
        d = self._definition
        if "cmd_template" not in d:
            self._fail("missing required key 'cmd_template'", key="cmd_template")
        cmd = d["cmd_template"]
        if not isinstance(cmd, str) or not cmd.strip():
            self._fail("cmd_template must be a non-empty string", "cmd_template", cmd)
        if "\0" in cmd:
            self._fail("cmd_template must not contain a NUL character", "cmd_template", cmd)
        self.nnodes = self._option("nnodes", whole_number, 1, default=1, nullable=False)
        self.ppn = self._option("ppn", whole_number, 1, default=1, nullable=False)
        self.ngpus_per_process = self._option("ngpus_per_process", gpus_per_process, default=0,
                                              nullable=False)
        self.timeout = self._option("timeout", seconds)
        self.retries = self._option("retries", whole_number, 0)
        self.estimated_runtime = self._option("estimated_runtime", seconds, default=0.0,
                                              allow_zero=True)
        self.cpu_affinity = self._option("cpu_affinity", cpu_ids, default=[])
        self.gpu_affinity = self._option("gpu_affinity", gpu_ids, default=[])
        relation = d.get("relation")
        if relation is not None and relation not in RELATIONS:
            self._fail(f"relation must be one of {', '.join(RELATIONS)}", "relation", relation)
        self.relation = relation
        for key in ("run_dir", "stdout_file", "stderr_file"):
            self._option(key, path_option)
        self.templates = {
            key: Template.compile(d[key]) for key in TEMPLATED_OPTIONS
            if key in d and d[key] is not None
        }
        self.env_templates = {k: Template.compile(v) for k, v in self._environment().items()}

    def _option(self, key: str, check: Callable[..., Any], *args: Any, default: Any = None,
                nullable: bool = True, **kwargs: Any) -> Any:
        """Option ``key`` as ``check`` returns it (``default`` when absent, or null where
        null means "not set"); a value it refuses is an error naming file, key and value."""
        value = self._definition.get(key, default)
        if value is None and nullable:
            return default
        try:
            return check(key, value, *args, **kwargs)
        except BadValue as exc:
            self._fail(exc.reason, key, value)

    def _environment(self) -> dict[str, str]:
        """``env`` as names and value texts (templates); numbers become text, anything else
        that is not a string is refused rather than passed on as "None" or a repr."""
        env = self._definition.get("env")
        if env is None:
            return {}
        if not isinstance(env, Mapping):
            self._fail("env must be a mapping of variable names to values", "env", env)
        texts = {}
        for name, value in env.items():
            try:
                env_name(name)
            except BadValue as exc:
                self._fail(exc.reason, "env", name)
            try:
                texts[name] = env_value_text(name, value)
            except BadValue as exc:
                self._fail(exc.reason, f"env.{name}", value)
        return texts

    def _parse_parameters(self) -> None:
        used: set[str] = set()
        for t in (*self.templates.values(), *self.env_templates.values()):
            used |= t.names
        self.constants: dict[str, Any] = {k: getattr(self, k) for k in OPTION_PLACEHOLDERS}
        self.lists: dict[str, Sequence] = {}
        self.from_files: set[str] = set()
        keys = [key for key in self._definition if key not in OPTIONS]
        self._check_placeholders_defined(used, keys)
        for key in keys:
            value = self._definition[key]
            if key not in used:
                self._fail_unused(key, value)
            self._add_parameter(key, value)

    def _check_placeholders_defined(self, used: set[str], keys: list[Any]) -> None:
        """Every ``{name}`` a template asks for is a key of the ensemble (checked before
        unused keys, so that a misspelt placeholder is named, not only the key it missed)."""
        for key in keys:
            if not isinstance(key, str):
                self._fail("a key must be a string; quote it", str(key), self._definition[key])
        defined = {*keys, *OPTION_PLACEHOLDERS}
        for name in sorted(used - defined):
            where = next(k for k, t in self._all_templates() if name in t.names)
            self._fail(f"{where} asks for {{{name}}}, but the ensemble has no key {name!r}"
                       f"{_did_you_mean(name, keys, OPTION_PLACEHOLDERS)}", where,
                       self._template_text(where))

    def _fail_unused(self, key: str, value: Any) -> NoReturn:
        hint = next(filter(None, (_near_miss(key, where, self._template_text(where))
                                  for where, _ in self._all_templates())), "")
        if not hint:
            hint = _did_you_mean(key, OPTIONS) or f"; options are: {', '.join(sorted(OPTIONS))}"
        shown = key if len(key) <= 60 else key[:57] + "..."
        self._fail("unknown key: it is not an option and no template uses it as {" + shown + "}"
                   + hint, key, value)

    def _all_templates(self) -> Iterator[tuple[str, Template]]:
        """Each template with where it is written: an option name, or ``env.NAME``."""
        yield from self.templates.items()
        for name, template in self.env_templates.items():
            yield f"env.{name}", template

    def _template_text(self, where: str) -> str:
        if where.startswith("env."):
            return str(self._definition["env"][where[4:]])
        return self._definition[where]

    def _add_parameter(self, key: str, value: Any) -> None:
        if isinstance(value, list):
            if not value:
                self._fail("a parameter list must not be empty", key, value)
            self._check_list_values(key, value, value)
            self.lists[key] = value
        elif isinstance(value, str) and params.looks_like_expression(value):
            try:
                seq = params.evaluate(value)
            except params.ExpressionError as exc:
                self._fail(str(exc), key, value)
            if len(seq) == 0:
                self._fail("the expression yields no values", key, value)
            if isinstance(seq, list):
                self._check_list_values(key, seq, value)
            if params.reads_files(value):
                self.from_files.add(key)
            self.lists[key] = seq
        elif _is_scalar(value):
            self._check_list_values(key, [value], value)
            self.constants[key] = value
        else:
            self._fail("a parameter must be a list, an expression string or a scalar",
                       key, value)

    def _check_list_values(self, key: str, values: Sequence[Any], written: Any) -> None:
        """Each value becomes text in a command: null, a mapping or a nested list would
        become "None" or a Python repr, and a NUL cannot be passed to a program."""
        for i, item in enumerate(values):
            if not _is_scalar(item):
                kind = "null" if item is None else type(item).__name__
                self._fail(f"value {i} is {kind}; a value must be a string, a number or "
                           "true/false", key, written)
            if isinstance(item, str) and "\0" in item:
                self._fail(f"value {i} contains a NUL character", key, written)
            if isinstance(item, str) and not _encodable(item):
                self._fail(f"value {i} holds a lone surrogate, which cannot be encoded", key,
                           written)

    def _quote_values_from_files(self) -> None:
        """File names and file contents reach the command as data: quoted for /bin/sh where
        they stand. Values written in the ensemble file are the user's own command text
        and are substituted as written; env, run_dir and output paths never pass through
        a shell, so they take every value as it is."""
        template = self.templates["cmd_template"].quoting(self.from_files)
        self.templates["cmd_template"] = template
        if not template.quoted:
            return
        checks = [(None, ["x"] * len(template.holes)),
                  *template.written_values_to_check(self._written_values)]
        for name, texts in checks:
            try:
                template.check_quotable(name or "", texts)
            except ValueError as exc:
                key = name or "cmd_template"
                self._fail(str(exc), key, self._definition.get(key))

    def _written_values(self, name: str) -> Iterator[Any]:
        """The values of a parameter written in the ensemble file, held in memory (computed
        sequences hold numbers, which have no shell syntax)."""
        if name in self.lists:
            values = self.lists[name]
            if isinstance(values, list):
                yield from values
        elif name in self.constants:
            yield self.constants[name]

    def _count_tasks(self) -> int:
        lengths = {k: len(v) for k, v in self.lists.items()}
        self._names = tuple(self.lists)
        self._seqs = tuple(self.lists[k] for k in self._names)
        self._radix = tuple(lengths[k] for k in self._names)
        if len(lengths) <= 1:
            return next(iter(lengths.values()), 1)
        if self.relation is None:
            self._fail(f"parameters {', '.join(self._names)} all have lists of values; say how "
                       "to combine them with \"relation\": \"one-to-one\" or "
                       "\"many-to-many\"", "relation", None)
        if self.relation == "one-to-one":
            if len(set(lengths.values())) != 1:
                shown = ", ".join(f"{k}={n}" for k, n in lengths.items())
                self._fail(f"one-to-one needs parameter lists of equal length, got {shown}",
                           "relation", self.relation)
            return next(iter(lengths.values()))
        size = math.prod(lengths.values())
        if size > params.MAX_VALUES:
            shown = " x ".join(f"{k}={n}" for k, n in lengths.items())
            self._fail(f"many-to-many of {shown} makes {params.approximately(size)} tasks; an "
                       f"ensemble can have at most {params.MAX_VALUES}", "relation",
                       self.relation)
        return size

    def _check_values_format(self) -> None:
        """Format every value of every parameter in every hole that takes it, so that a
        value a format spec does not fit (``{a:d}`` and "x") is an error now and not a crash
        when its task is made. A hole formats one value alone, so this covers every task
        of a many-to-many product at the cost of the lists, not of the product. Values
        held in memory are all tried; a computed sequence (linspace, range, ...) has
        values of one type between its two ends, so its ends stand for it."""
        for where, template in self._all_templates():
            only_hole = len(template.holes) == 1 and not any(template.literals)
            for name, spec in dict.fromkeys(template.holes):
                for i, value in self._values_to_try(name):
                    try:
                        text = format(value, spec)
                    except (ValueError, TypeError, OverflowError) as exc:
                        hole = "{" + name + (":" + spec if spec else "") + "}"
                        self._fail(f"{hole} in {where} cannot format {_short(value)}, value "
                                   f"{i} of {name}: {exc}", name, self._definition.get(name, value))
                    if only_hole and not text and where in ("run_dir", "stdout_file",
                                                            "stderr_file"):
                        self._fail(f"value {i} is empty, so {where} would be empty", name,
                                   self._definition[name])

    def _values_to_try(self, name: str) -> Iterator[tuple[int, Any]]:
        if name not in self.lists:
            yield 0, self.constants[name]
            return
        values = self.lists[name]
        if isinstance(values, list):
            yield from enumerate(values)
        else:
            yield from ((i, values[i]) for i in sorted({0, len(values) - 1}))

    def _check_host(self) -> None:
        """Check what each task would otherwise find missing only when it starts (see
        :mod:`preflight`), so that one error replaces a failure of every task. Each path
        is checked for every distinct value it takes, up to PREFLIGHT_TASKS tasks; a task
        beyond the bound that lacks its directory fails alone, as a result."""
        for key in preflight.PATH_OPTIONS:
            if key in self.templates:
                names = self.templates[key].names
                if key != "run_dir" and "run_dir" in self.templates:
                    names |= self.templates["run_dir"].names
                self._check_tasks(names, functools.partial(preflight.path_problem, key=key))
        names = self.templates["cmd_template"].names
        for template in self.env_templates.values():
            names |= template.names
        self._check_tasks(names, preflight.exec_problem)

    def _check_tasks(self, names: set[str],
                     problem_of: Callable[[Task], preflight.Problem | None]) -> None:
        for task in self._tasks_covering(names):
            problem = problem_of(task)
            if problem:
                key = "cmd_template" if problem.key == "command" else problem.key
                self._fail(f"{problem.text}, so task {task.task_id} could not start", key,
                           self._definition.get(key))

    def _tasks_covering(self, names: set[str]) -> list[Task]:
        """Tasks that between them take every combination of the listed parameters in
        ``names``, at most PREFLIGHT_TASKS of them, less those that will not run. A task
        that cannot be rendered is left to :meth:`_check_renders`, which reports it."""
        tasks = []
        for index in itertools.islice(self._indices_covering(names),
                                      preflight.PREFLIGHT_TASKS):
            try:
                tasks.append(self[index])
            except (ValueError, TypeError, KeyError):
                continue
        tasks = preflight.running(tasks, self._will_run)
        return tasks if names.intersection(self._names) else tasks[:1]

    def _indices_covering(self, names: set[str]) -> Iterator[int]:
        """Indices of tasks that take every combination of the listed parameters in
        ``names``; for none, task 0 stands for all (or, on a resume, whichever of the
        first tasks runs again)."""
        listed = [i for i, name in enumerate(self._names) if name in names]
        if not listed:
            yield from range(self._size) if self._will_run else (0,)
        elif self.relation != "many-to-many" or len(self._names) == 1:
            yield from range(self._size)
        else:
            strides = [math.prod(self._radix[i + 1:]) for i in listed]
            for digits in _odometer([self._radix[i] for i in listed]):
                yield sum(d * s for d, s in zip(digits, strides, strict=True))

    def _check_renders(self) -> None:
        """Render the first and last task now, so format errors surface before the run."""
        for index in {0, self._size - 1}:
            try:
                self[index]
            except (ValueError, TypeError, KeyError) as exc:
                self._fail(f"cannot render task {index}: {exc}", "cmd_template",
                           self._definition["cmd_template"])
        runs = self._tasks_covering(set())
        if runs:
            self._check_executable(runs[0])

    def _check_executable(self, task: Task) -> None:
        """The program of a command whose first word is plain text must exist. The word
        is read directly, not with shlex, which takes time quadratic in a word's length;
        a first word with quotes, escapes or shell syntax is left to the run."""
        template = self._definition["cmd_template"]
        argv0 = _FIRST_WORD.match(template).group(1)  # type: ignore[union-attr]
        if _PLACEHOLDER.search(argv0) or any(c in argv0 for c in "$`=;|&<>(){}~*'\"\\"):
            return
        if argv0 in _SHELL_WORDS and direct_program(template) is None:
            return
        if resolve_program(argv0, task.run_dir) is None:
            self._fail(f"executable {argv0!r} not found (looked in PATH"
                       f"{' and ' + task.run_dir if task.run_dir else ''})",
                       "cmd_template", template)

    # -- the task sequence -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def _at(self, index: int) -> Task:
        values = dict(self.constants)
        if self.relation == "many-to-many" and len(self._seqs) > 1:
            rest = index
            for name, seq, n in zip(reversed(self._names), reversed(self._seqs),
                                    reversed(self._radix), strict=False):
                rest, digit = divmod(rest, n)
                values[name] = seq[digit]
        else:
            for name, seq in zip(self._names, self._seqs, strict=False):
                values[name] = seq[index]
        return self._make_task(index, values)

    def __iter__(self) -> Iterator[Task | UnbuildableTask]:
        for i in range(self._size):
            try:
                yield self[i]
            except (ValueError, TypeError, KeyError, EnsembleLauncherError) as exc:
                where = f"{self.source}: " if self.source else ""
                yield UnbuildableTask(f"{self.name}-{i}", self.name,
                                      f"{where}ensemble {self.name!r}: task {i} cannot be "
                                      f"built: {exc}")

    def _make_task(self, index: int, values: dict[str, Any]) -> Task:
        t = self.templates
        env = {k: tpl.render(values) for k, tpl in self.env_templates.items()}
        return rendered_task(
            task_id=f"{self.name}-{index}",
            nnodes=self.nnodes,
            ppn=self.ppn,
            executable=t["cmd_template"].render(values),
            env=env,
            ngpus_per_process=self.ngpus_per_process,
            cpu_affinity=self.cpu_affinity,
            gpu_affinity=self.gpu_affinity,
            run_dir=t["run_dir"].render(values) if "run_dir" in t else None,
            timeout=self.timeout,
            stdout_file=t["stdout_file"].render(values) if "stdout_file" in t else None,
            stderr_file=t["stderr_file"].render(values) if "stderr_file" in t else None,
            estimated_runtime=self.estimated_runtime,
            ensemble=self.name,
            retries=self.retries,
        )


def _odometer(radix: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every digit tuple below ``radix``, last digit fastest, made one at a time:
    ``itertools.product`` would first copy each ``range`` into a tuple, which for a
    parameter of 10**10 values does not fit in memory."""
    if any(r <= 0 for r in radix):
        return
    digits = [0] * len(radix)
    while True:
        yield tuple(digits)
        position = len(digits) - 1
        while position >= 0:
            digits[position] += 1
            if digits[position] < radix[position]:
                break
            digits[position] = 0
            position -= 1
        if position < 0:
            return
