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

import math
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ensemble_launcher.ensemble import params
from ensemble_launcher.ensemble.programs import resolve_program
from ensemble_launcher.ensemble.task import Task, parse_id_list
from ensemble_launcher.errors import EnsembleFileError

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


@dataclass(frozen=True, slots=True)
class _Template:
    """A string with ``{param}`` holes, split once so rendering is a join."""

    literals: tuple[str, ...]
    holes: tuple[tuple[str, str], ...]

    @classmethod
    def compile(cls, text: str) -> _Template:
        literals, holes, pos = [], [], 0
        for m in _PLACEHOLDER.finditer(text):
            literals.append(text[pos:m.start()])
            holes.append((m.group(1), m.group(2) or ""))
            pos = m.end()
        literals.append(text[pos:])
        return cls(tuple(literals), tuple(holes))

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.holes}

    def render(self, values: Mapping[str, Any]) -> str:
        if not self.holes:
            return self.literals[0]
        out = [self.literals[0]]
        for (name, spec), lit in zip(self.holes, self.literals[1:], strict=False):
            value = values[name]
            out.append(format(value, spec) if spec else str(value))
            out.append(lit)
        return "".join(out)


class EnsembleSpec(Sequence):
    """A validated ensemble: ``len(spec)`` tasks, ``spec[i]`` builds task ``i``."""

    def __init__(self, name: str, definition: Any, source: str | None = None) -> None:
        self.name = name
        self.source = source
        if not isinstance(definition, Mapping):
            self._fail(f"an ensemble must be a mapping of keys, got {type(definition).__name__}",
                       value=definition)
        self._definition = dict(definition)
        self._parse_options()
        self._parse_parameters()
        self._size = self._count_tasks()
        if self._size:
            self._check_renders()

    # -- parsing ---------------------------------------------------------------------------

    def _fail(self, message: str, key: str | None = None, value: Any = None) -> NoReturn:
        raise EnsembleFileError(message, file=self.source, ensemble=self.name, key=key,
                                value=value, has_value=key is not None)

    def _parse_options(self) -> None:
        d = self._definition
        if "cmd_template" not in d:
            self._fail("missing required key 'cmd_template'", key="cmd_template")
        cmd = d["cmd_template"]
        if not isinstance(cmd, str) or not cmd.strip():
            self._fail("cmd_template must be a non-empty string", "cmd_template", cmd)
        self.nnodes = self._positive_int("nnodes", 1)
        self.ppn = self._positive_int("ppn", 1)
        self.ngpus_per_process = self._positive_int("ngpus_per_process", 0, minimum=0)
        self.timeout = self._optional_seconds("timeout")
        self.retries = self._positive_int("retries", 0, minimum=0) \
            if "retries" in self._definition else None
        self.estimated_runtime = self._optional_seconds("estimated_runtime") or 0.0
        self.cpu_affinity = self._id_list("cpu_affinity", int)
        self.gpu_affinity = self._id_list("gpu_affinity", str)
        relation = d.get("relation")
        if relation is not None and relation not in RELATIONS:
            self._fail(f"relation must be one of {', '.join(RELATIONS)}", "relation", relation)
        self.relation = relation
        env = d.get("env", {})
        if not isinstance(env, Mapping) or not all(isinstance(k, str) for k in env):
            self._fail("env must be a mapping of variable names to values", "env", env)
        self.templates = {
            key: _Template.compile(d[key]) for key in TEMPLATED_OPTIONS
            if key in d and d[key] is not None
        }
        for key in ("run_dir", "stdout_file", "stderr_file"):
            if key in d and d[key] is not None and not isinstance(d[key], str):
                self._fail(f"{key} must be a string", key, d[key])
        self.env_templates = {k: _Template.compile(str(v)) for k, v in env.items()}

    def _positive_int(self, key: str, default: int, minimum: int = 1) -> int:
        value = self._definition.get(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            self._fail(f"{key} must be a whole number >= {minimum}", key, value)
        return value

    def _optional_seconds(self, key: str) -> float | None:
        value = self._definition.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self._fail(f"{key} must be a number of seconds > 0", key, value)
        return float(value)

    def _id_list(self, key: str, kind: type) -> list:
        value = self._definition.get(key)
        if value is None:
            return []
        try:
            if isinstance(value, str):
                return parse_id_list(value, kind)
            if isinstance(value, list):
                return [kind(v) for v in value]
        except ValueError:
            pass
        self._fail(f"{key} must be a list of ids or a string like \"0,1,2\"", key, value)

    def _parse_parameters(self) -> None:
        used: set[str] = set()
        for t in (*self.templates.values(), *self.env_templates.values()):
            used |= t.names
        self.constants: dict[str, Any] = {k: getattr(self, k) for k in OPTION_PLACEHOLDERS}
        self.lists: dict[str, Sequence] = {}
        for key, value in self._definition.items():
            if key in OPTIONS:
                continue
            if key not in used:
                self._fail(
                    "unknown key: it is not an option and no template uses it as {" + key + "}"
                    f"; options are: {', '.join(sorted(OPTIONS))}", key, value)
            self._add_parameter(key, value)
        for name in sorted(used - self.constants.keys() - self.lists.keys()):
            where = next(k for k, t in {**self.templates, **self.env_templates}.items()
                         if name in t.names)
            key = where if where in self.templates else "env"
            self._fail(f"placeholder {{{name}}} names no parameter of this ensemble; "
                       f"define a key {name!r}", key, self._definition.get(key))

    def _add_parameter(self, key: str, value: Any) -> None:
        if isinstance(value, list):
            if not value:
                self._fail("a parameter list must not be empty", key, value)
            self.lists[key] = value
        elif isinstance(value, str) and params.looks_like_expression(value):
            try:
                seq = params.evaluate(value)
            except params.ExpressionError as exc:
                self._fail(str(exc), key, value)
            if len(seq) == 0:
                self._fail("the expression yields no values", key, value)
            self.lists[key] = seq
        elif isinstance(value, (str, int, float, bool)):
            self.constants[key] = value
        else:
            self._fail("a parameter must be a list, an expression string or a scalar",
                       key, value)

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
        return math.prod(lengths.values())

    def _check_renders(self) -> None:
        """Render the first and last task now, so format errors surface before the run."""
        for index in {0, self._size - 1}:
            try:
                self[index]
            except (ValueError, TypeError, KeyError) as exc:
                self._fail(f"cannot render task {index}: {exc}", "cmd_template",
                           self._definition["cmd_template"])
        self._check_executable(self[0])

    def _check_executable(self, task: Task) -> None:
        template = self._definition["cmd_template"]
        first_word = template.split(None, 1)[0]
        if _PLACEHOLDER.search(first_word) or any(c in first_word for c in "$`=;|&<>(){}~*"):
            return
        assert isinstance(task.executable, str)
        try:
            argv0 = shlex.split(task.executable)[0]
        except (ValueError, IndexError):
            return
        if resolve_program(argv0, task.run_dir) is None:
            self._fail(f"executable {argv0!r} not found (looked in PATH"
                       f"{' and ' + task.run_dir if task.run_dir else ''})",
                       "cmd_template", template)

    # -- the task sequence -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._size))]
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError(index)
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

    def __iter__(self) -> Iterator[Task]:
        for i in range(self._size):
            yield self[i]

    def _make_task(self, index: int, values: dict[str, Any]) -> Task:
        t = self.templates
        env = {k: tpl.render(values) for k, tpl in self.env_templates.items()}
        return Task(
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
