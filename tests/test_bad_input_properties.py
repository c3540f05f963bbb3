"""Generated malformed ensemble files and config files, each run through the real ``el run``.

For every one: exit status 2, one line of error that names the file, the key and the
value, no traceback, and nothing written (no run directory, no task run). The files are
JSON or YAML, written to disk and read by ``el run`` as a user's would be; most runs are
in-process (click's CliRunner) for speed, a few through a real subprocess.

Each example is one mutation of a good file, so that we know which key and value the
message must name. The strategies are derandomized, so CI sees the same examples.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble_launcher.cli import run
from ensemble_launcher.errors import _short

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

GOOD = {"cmd_template": "true {a}", "a": [1, 2, 3]}
#: The good ensemble beside the bad one: if it ever ran, it leaves this file.
MARKER = "task-ran"


NO_VALUE = object()


@dataclass
class Bad:
    """One malformed input and what its error message must contain. ``values`` are
    alternatives (a list's error may show the list or the element), each shown as
    errors._short shows it; ``@TMP@`` stands for the directory the files are in."""

    label: str
    ensemble: Any = None          # the bad ensemble's definition (beside a good one)
    raw: bytes | None = None      # the ensemble file's bytes, when not a structure
    system: Any = None            # a SystemConfig file's content
    launcher: Any = None          # a LauncherConfig file's content
    key: str | None = None
    values: tuple[Any, ...] = ()
    also: tuple[str, ...] = ()    # more text the message must contain
    make: tuple[str, ...] = ()    # to create first: "name/" a directory, else a file
    blobs: tuple[tuple[str, bytes], ...] = ()  # files to create first, with their bytes
    yaml_ok: bool = True

    def expected(self, tmp: Path) -> list[str]:
        key = [_short(self.key)[:-1]] if self.key else []
        return [*key, *(_here(p, tmp) for p in self.also)]

    def shown_values(self, tmp: Path) -> list[str]:
        return [_short(_here(v, tmp)) for v in self.values]


def named(key: str, value: Any, **kwargs: Any) -> dict[str, Any]:
    """Bad's fields for an error that names ``key`` and ``value`` (or, for a list, one of
    its elements)."""
    values = (value, *value) if isinstance(value, list) else (value,)
    return {"key": key, "values": values, **kwargs}


def _here(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("@TMP@", str(tmp))
    if isinstance(value, list):
        return [_here(v, tmp) for v in value]
    if isinstance(value, dict):
        return {_here(k, tmp): _here(v, tmp) for k, v in value.items()}
    return value


# -- values that no option of a given kind may take --------------------------------------------

LETTERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzXYZ", min_size=1, max_size=12)
ANY_STRUCTURE = st.one_of(st.dictionaries(LETTERS, st.integers(), min_size=0, max_size=2),
                          st.lists(st.integers(0, 3), min_size=1, max_size=3))
FRACTIONS = st.floats(allow_nan=True, allow_infinity=True).filter(
    lambda x: not (math.isfinite(x) and x.is_integer()))


def not_whole(minimum: int, nullable: bool = False) -> st.SearchStrategy:
    """Values that are not a whole number >= minimum."""
    options = [st.integers(max_value=minimum - 1), FRACTIONS, st.booleans(), LETTERS,
               ANY_STRUCTURE]
    return st.one_of(*options, *([] if nullable else [st.none()]))


def not_seconds(allow_zero: bool) -> st.SearchStrategy:
    """Values that are not a finite number of seconds > 0 (>= 0)."""
    below = st.floats(max_value=0.0, exclude_max=allow_zero, allow_nan=False,
                      allow_infinity=False)
    return st.one_of(below, st.sampled_from([math.nan, math.inf, -math.inf, 10**400]),
                     st.booleans(), LETTERS, ANY_STRUCTURE)


BAD_CPU_ID = st.one_of(st.integers(max_value=-1), FRACTIONS, st.booleans(), st.none(),
                       st.lists(st.integers(0, 3), max_size=2), LETTERS)
NOT_CPU_IDS = st.one_of(
    st.lists(BAD_CPU_ID, min_size=1, max_size=4),
    st.integers(0, 7).map(lambda i: [i, i]),
    st.sampled_from(["5-2", "0-", "-3", "x", "0,,a", "1.5", "0-99999999", "²"]),
    st.integers(), st.booleans(), st.dictionaries(LETTERS, st.integers(), max_size=2),
)
BAD_GPU_ID = st.one_of(st.integers(max_value=-1), st.floats(), st.booleans(), st.none(),
                       st.lists(st.integers(0, 3), max_size=2),
                       st.sampled_from(["", "a b", "x;y", "0\n1", "$(id)", "é"]))
NOT_GPU_IDS = st.one_of(st.lists(BAD_GPU_ID, min_size=1, max_size=3), st.integers(),
                        st.booleans(), st.dictionaries(LETTERS, st.integers(), max_size=2))
NOT_A_PATH = st.one_of(st.integers(), st.floats(), st.booleans(),
                       st.lists(LETTERS, max_size=2), st.just(""), st.just("a\0b"))
BAD_ENV_NAME = st.one_of(st.just(""), st.from_regex(r"[0-9][A-Z0-9_]{0,5}", fullmatch=True),
                         st.sampled_from(["A=B", "A\0", "A-B", "A B", "é", "PATH;x"]))
BAD_ENV_VALUE = st.one_of(st.none(), st.booleans(), ANY_STRUCTURE, st.just("a\0b"),
                          st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def bad_option(draw) -> Bad:
    """A good ensemble with one option set to a value it cannot take."""
    key, values = draw(st.sampled_from(sorted(OPTION_VALUES.items())))
    value = draw(values)
    return Bad(f"{key}={value!r}", {**GOOD, key: value}, key=key, values=(value,))


OPTION_VALUES: dict[str, st.SearchStrategy] = {
    "nnodes": not_whole(1),
    "ppn": not_whole(1),
    "ngpus_per_process": not_whole(0),
    "retries": not_whole(0, nullable=True),
    "timeout": not_seconds(allow_zero=False),
    "estimated_runtime": not_seconds(allow_zero=True),
    "cpu_affinity": NOT_CPU_IDS,
    "gpu_affinity": NOT_GPU_IDS,
    "run_dir": NOT_A_PATH,
    "stdout_file": NOT_A_PATH,
    "stderr_file": NOT_A_PATH,
    "relation": st.one_of(LETTERS, st.integers(), st.lists(LETTERS, max_size=2)),
    "env": st.one_of(st.lists(LETTERS, min_size=1, max_size=2), LETTERS, st.integers()),
    "cmd_template": st.one_of(st.integers(), st.floats(), st.booleans(), st.none(),
                              st.lists(LETTERS, max_size=2), st.just(" "), st.just("true\0")),
}


@st.composite
def bad_environment(draw) -> Bad:
    """An ``env`` with one bad name or one bad value beside good ones."""
    if draw(st.booleans()):
        name = draw(BAD_ENV_NAME)
        env = {"GOOD": "1", name: "x"}
        return Bad(f"env name {name!r}", {**GOOD, "env": env}, key="env", values=(name,))
    value = draw(BAD_ENV_VALUE)
    return Bad(f"env value {value!r}", {**GOOD, "env": {"GOOD": "1", "BAD": value}},
               key="env.BAD", values=(value,))


@st.composite
def missing_on_the_host(draw) -> Bad:
    """Paths that a task would find unusable only when it starts."""
    name = draw(LETTERS)
    return draw(st.sampled_from([
        Bad("run_dir missing", {**GOOD, "run_dir": f"@TMP@/missing-{name}"},
            key="run_dir", values=(f"@TMP@/missing-{name}",)),
        Bad("run_dir missing for a=2", {**GOOD, "run_dir": "@TMP@/d{a}"}, key="run_dir",
            values=("@TMP@/d{a}",), also=("d2",), make=("d1/", "d3/")),
        Bad("stdout_file is a directory", {**GOOD, "stdout_file": f"@TMP@/{name}"},
            key="stdout_file", values=(f"@TMP@/{name}",), make=(f"{name}/",)),
        Bad("stderr_file below a file", {**GOOD, "stderr_file": "@TMP@/plain/e"},
            key="stderr_file", values=("@TMP@/plain/e",), make=("plain",)),
    ]))


@st.composite
def unknown_key(draw) -> Bad:
    key = draw(LETTERS.filter(lambda k: k != "a"))
    value = draw(st.one_of(st.integers(), LETTERS))
    return Bad(f"unknown key {key}", {**GOOD, key: value}, key=key, values=(value,))


@st.composite
def bad_parameter(draw) -> Bad:
    """Parameter expressions and values that cannot give a list of values (14, 16)."""
    value = draw(st.one_of(
        st.sampled_from([
            "linspace('a','b',3)", "logspace(0,1000,3)", "logspace(0, 1, 3, 'x')",
            "range(0,10,0)", "arange(0,1e999)", "arange(0,1,1e-300)", "linspace(0, 10",
            "foo(1,2)", "linspace(0, 1, -1)", "range(1.5)", "lines('/no/such/file')",
            "glob('/no/such/dir/*')", "[1, 2",
        ]),
        st.dictionaries(LETTERS, st.integers(), max_size=2), st.just([]), st.none(),
    ))
    return Bad(f"a={value!r}", {**GOOD, "a": value}, key="a", values=(value,))


def fixed_cases() -> list[Bad]:
    """Parameters that need more than one key or a file to go wrong (14), and values too
    large for Hypothesis to show when an example fails (17, 19)."""
    huge = {f"p{i}": "linspace(0, 1, 1000000000)" for i in range(4)}
    template = "true " + " ".join(f"{{{k}}}" for k in huge)
    return [
        Bad("lines() of a binary file", {**GOOD, "a": "lines('@TMP@/blob.bin')"}, key="a",
            values=("lines('@TMP@/blob.bin')",), blobs=(("blob.bin", b"\xff\xfe\x00\x81"),)),
        Bad("a many-to-many count beyond 2**63",
            {"cmd_template": template, **huge, "relation": "many-to-many"}, also=("p",)),
        Bad("env too large", {**GOOD, "env": {"BIG": "x" * 140_000}}, key="env",
            also=("BIG",)),
        Bad("a key of 100 kB", {**GOOD, "k" * 100_000: 1}, key="k" * 100_000, values=(1,),
            yaml_ok=False),
        Bad("a value of 1 MB", {**GOOD, "timeout": "9" * 1_000_000}, key="timeout",
            values=("9" * 1_000_000,), yaml_ok=False),
        Bad("a list of 100,000 CPUs", {**GOOD, "cpu_affinity": list(range(100_000))},
            key="cpu_affinity", values=(list(range(100_000)),), yaml_ok=False),
    ]


@st.composite
def bad_template(draw) -> Bad:
    """Templates asking for what does not exist, or that cannot be rendered (15, 19). The
    error may name cmd_template or the parameter it cannot use, but it must say which part
    of the template is wrong."""
    template, wrong = draw(st.sampled_from([
        ("true {a} {zzz}", "{zzz}"), ("true {zzz}", "{zzz}"), ("echo {a", "{a"),
        ("echo {a!r}", "{a!r}"), ("echo {a:q}", "{a:q}"), ("echo {a:d}", "{a:d}"),
        ("echo {a:.2f}", "{a:.2f}"),
    ]))
    values = [1, "x", 3] if template.endswith(("{a:d}", "{a:.2f}")) else GOOD["a"]
    return Bad(f"template {template!r}", {"cmd_template": template, "a": values},
               values=(template, values), also=("cmd_template", wrong))


def structure_cases() -> list[Bad]:
    """Whole files that are not a well-formed set of ensembles (14, 15, 16)."""
    deep = b"[" * 20_000 + b"]" * 20_000
    dup_key = b'{"ensembles": {"e": {"cmd_template": "true", "cmd_template": "false"}}}'
    dup_name = (b'{"ensembles": {"e": {"cmd_template": "true"}, '
                b'"e": {"cmd_template": "false"}}}')
    return [
        Bad("top level a list", raw=b"[1, 2]", yaml_ok=False),
        Bad("ensembles a list", raw=b'{"ensembles": []}', key="ensembles", yaml_ok=False),
        Bad("no ensembles", raw=b'{"ensembles": {}}', key="ensembles", yaml_ok=False),
        Bad("extra top-level key", raw=b'{"ensembles": {"e": {"cmd_template": "true"}}, '
            b'"x": 1}', key="x", yaml_ok=False),
        Bad("ensemble not a mapping", raw=b'{"ensembles": {"e": 5}}', also=("5",),
            yaml_ok=False),
        Bad("nested 20,000 deep", raw=deep, yaml_ok=False),
        Bad("not UTF-8", raw=b'{"ensembles": {"e": {"cmd_template": "true \xff\xfe"}}}',
            yaml_ok=False),
        Bad("duplicate key", raw=dup_key, key="cmd_template", yaml_ok=False),
        Bad("duplicate ensemble name", raw=dup_name, also=("'e'",), yaml_ok=False),
        Bad("YAML names 1 and '1'", raw=b"ensembles:\n  1: {cmd_template: 'true'}\n"
            b"  '1': {cmd_template: 'true'}\n", also=("1",)),
        Bad("YAML nested 20,000 deep", raw=b"a: " + deep),
    ]


# -- config files --------------------------------------------------------------------------------

NOT_A_NUMBER = st.one_of(LETTERS, ANY_STRUCTURE, st.booleans())
BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}
NOT_A_BOOL = st.one_of(st.integers().filter(lambda i: i not in (0, 1)),
                       LETTERS.filter(lambda t: t.lower() not in BOOL_WORDS), ANY_STRUCTURE,
                       st.none())
NOT_A_STRING = st.one_of(st.integers(), st.floats(), st.booleans(), ANY_STRUCTURE)
NOT_ARGS = st.one_of(LETTERS, st.lists(st.one_of(st.integers(), st.none()), min_size=1,
                                       max_size=2), st.just(["a\0b"]))


def not_in(*choices: str, nullable: bool = False) -> st.SearchStrategy:
    return st.one_of(LETTERS.filter(lambda t: t not in choices), st.integers(), ANY_STRUCTURE,
                     *([] if nullable else [st.none()]))


def not_float(bound: str, nullable: bool = False) -> st.SearchStrategy:
    below = st.floats(max_value=0.0, exclude_max=bound == ">=", allow_nan=False,
                      allow_infinity=False)
    return st.one_of(below, st.sampled_from([math.nan, math.inf, -math.inf, 10**400]),
                     NOT_A_NUMBER,
                     *([] if nullable else [st.none()]))


RETRY_REASONS = ("exit_code", "signal", "exception", "timeout", "worker_lost", "launch")
SYSTEM_VALUES: dict[str, st.SearchStrategy] = {
    "name": NOT_A_STRING,
    "ncpus": st.one_of(not_whole(1), st.integers(min_value=65537)),
    "ngpus": st.one_of(not_whole(0), st.integers(min_value=65537)),
    "cpus": NOT_CPU_IDS,
    "gpus": NOT_GPU_IDS,
}
LAUNCHER_VALUES: dict[str, st.SearchStrategy] = {
    "child_executor_name": not_in("multiprocessing", "mpi", "dragon", "simulate",
                                  nullable=True),
    "task_executor_name": not_in("multiprocessing", "mpi", "dragon", "simulate"),
    "comm_name": not_in("multiprocessing", "zmq", "dragon", nullable=True),
    "report_interval": not_float(">"),
    "nlevels": st.one_of(not_whole(0, nullable=True), st.integers(min_value=4)),
    "return_stdout": NOT_A_BOOL,
    "resource_usage": NOT_A_BOOL,
    "worker_logs": NOT_A_BOOL,
    "nchildren": not_whole(1, nullable=True),
    "profile": not_in("basic", "timeline", nullable=True),
    "gpu_selector": st.one_of(st.sampled_from(["", "1A", "A-B", "A=B", "é"]), st.integers(),
                              ANY_STRUCTURE),
    "kill_grace": not_float(">="),
    "stderr_tail_bytes": not_whole(0),
    "heartbeat_interval": not_float(">"),
    "child_start_timeout": not_float(">"),
    "child_launcher": not_in("auto", "local", "srun", "mpiexec"),
    "child_launcher_args": NOT_ARGS,
    "mpi_flavor": not_in("auto", "hydra", "pals", "openmpi"),
    "mpi_args": NOT_ARGS,
    "retries": not_whole(0),
    "retry_on": st.one_of(LETTERS, st.lists(LETTERS.filter(lambda t: t not in RETRY_REASONS),
                                            min_size=1, max_size=2)),
    "node_loss_retries": not_whole(0),
    "shutdown_grace": not_float(">="),
    "walltime": not_float(">", nullable=True),
    "bind_address": NOT_A_STRING,
}


@st.composite
def bad_config(draw) -> Bad:
    """A SystemConfig or LauncherConfig file with one bad or unknown key."""
    which, values = draw(st.sampled_from([("system", SYSTEM_VALUES),
                                          ("launcher", LAUNCHER_VALUES)]))
    if draw(st.integers(0, 9)) == 0:
        key, value = draw(LETTERS.filter(lambda k: k not in values)), 1
    else:
        key, strategy = draw(st.sampled_from(sorted(values.items())))
        value = draw(strategy)
    return Bad(f"{which} {key}={value!r}", **named(key, value), **{which: {key: value}})


# -- running el ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    exit_code: int
    stderr: str
    files_after: set[str] = field(default_factory=set)


@contextlib.contextmanager
def _inside(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def write_inputs(bad: Bad, tmp: Path, suffix: str) -> list[str]:
    """The files of ``bad`` under ``tmp``; returns el run's arguments."""
    for name in bad.make:
        if name.endswith("/"):
            (tmp / name).mkdir()
        else:
            (tmp / name).write_text("")
    for name, data in bad.blobs:
        (tmp / name).write_bytes(data)
    ensemble = tmp / f"ensemble{suffix}"
    if bad.raw is not None:
        ensemble.write_bytes(bad.raw)
    else:
        good = {"cmd_template": "touch {m}", "m": MARKER}
        ensembles = {"good": good, "bad": _here(bad.ensemble or GOOD, tmp)}
        ensemble.write_text(_dump({"ensembles": ensembles}, suffix))
    args = ["run", str(ensemble), "--out", str(tmp / "run"), "--no-progress"]
    for flag, content in (("--system-config", bad.system), ("--launcher-config", bad.launcher)):
        if content is not None:
            path = tmp / f"{flag.strip('-')}{suffix}"
            path.write_text(_dump(content, suffix))
            args += [flag, str(path)]
    return args


def _dump(data: Any, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(data)
    return yaml.safe_dump(data, allow_unicode=True)


def run_in_process(args: list[str], tmp: Path) -> Outcome:
    """``el run`` in this process: the run command itself, without the group around it,
    which registers a stack dump on the real stderr that the runner replaces."""
    assert args[0] == "run"
    with _inside(tmp):
        result = CliRunner().invoke(run, args[1:], catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: {result.exception!r}"
    return Outcome(result.exit_code, result.stderr, _files(tmp))


def run_subprocess(args: list[str], tmp: Path) -> Outcome:
    proc = subprocess.run([sys.executable, "-m", "ensemble_launcher.cli", *args], cwd=tmp,
                          capture_output=True, text=True, timeout=60)
    return Outcome(proc.returncode, proc.stderr, _files(tmp))


def _files(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*")}


def check_rejected(bad: Bad, suffix: str = ".json", subprocess_run: bool = False) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        args = write_inputs(bad, tmp, suffix)
        written = _files(tmp)
        outcome = (run_subprocess if subprocess_run else run_in_process)(args, tmp)
        message = outcome.stderr
        context = f"{bad.label} ({suffix}): {message!r}"
        assert outcome.exit_code == 2, context
        assert "Traceback" not in message, context
        assert message.startswith("el: error: ") and message.count("\n") == 1, context
        assert len(message) < 2000, context
        named_file = [a for a in args if a.endswith(suffix)]
        assert any(f in message for f in named_file), context
        for part in bad.expected(tmp):
            assert part in message, f"{context} lacks {part!r}"
        shown = bad.shown_values(tmp)
        assert not shown or any(v in message for v in shown), f"{context} lacks {shown[0]!r}"
        assert outcome.files_after == written, f"{context} wrote " \
            f"{sorted(outcome.files_after - written)}"


SUFFIXES = st.sampled_from([".json", ".yaml"])


@SETTINGS
@given(st.one_of(bad_option(), bad_environment(), unknown_key(), missing_on_the_host()),
       SUFFIXES)
def test_bad_option_values_are_rejected_naming_file_key_and_value(bad, suffix):
    check_rejected(bad, suffix)


@settings(SETTINGS, max_examples=400)
@given(bad_config(), SUFFIXES)
def test_bad_config_values_are_rejected_naming_file_key_and_value(bad, suffix):
    check_rejected(bad, suffix)


@settings(SETTINGS, max_examples=80)
@given(st.one_of(bad_parameter(), bad_template()), SUFFIXES)
def test_bad_parameters_and_templates_are_rejected_naming_file_key_and_value(bad, suffix):
    check_rejected(bad, suffix)


def test_malformed_files_are_rejected_naming_the_file():
    for bad in [*structure_cases(), *fixed_cases()]:
        for suffix in (".json", ".yaml") if bad.yaml_ok else (".json",):
            check_rejected(bad, suffix)


def test_a_few_through_a_real_el_process():
    """The same checks on a real process: its stderr and exit status, not click's."""
    cases = [
        Bad("timeout NaN", {**GOOD, "timeout": math.nan}, key="timeout", values=(math.nan,)),
        Bad("env null", {**GOOD, "env": {"A": None}}, key="env.A", values=(None,)),
        Bad("run_dir missing", {**GOOD, "run_dir": "@TMP@/nope"}, key="run_dir",
            values=("@TMP@/nope",)),
        Bad("gpus [null]", system={"gpus": [None]}, key="gpus", values=([None],)),
    ]
    for bad in cases:
        check_rejected(bad, ".yaml" if bad.system else ".json", subprocess_run=True)
