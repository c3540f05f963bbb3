"""Bad input fails before any task starts, with one error naming file, ensemble, key, value."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from test_bad_input_properties import run_in_process, run_subprocess

from ensemble_launcher import EnsembleLauncher, SystemConfig
from ensemble_launcher.ensemble import Task
from ensemble_launcher.errors import ConfigError, EnsembleFileError, ResourceError

BAD = "sweep_bad"


@dataclass
class Case:
    """One bad ensemble file; ``expected`` must all appear in the error message."""

    bad: dict | None = None
    text: str | None = None
    suffix: str = ".json"
    top_level: dict = field(default_factory=dict)
    expected: tuple[str, ...] = ()
    names_ensemble: bool = True
    names_file: bool = True
    error: type[ConfigError] = EnsembleFileError
    #: Directories and files to make under tmp_path first ("name/" for a directory).
    make: tuple[str, ...] = ()

    def write(self, tmp_path: Path) -> Path:
        for name in self.make:
            target = tmp_path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith("/"):
                target.mkdir(exist_ok=True)
            else:
                target.write_text("")
        path = tmp_path / f"ensemble{self.suffix}"
        if self.text is not None:
            path.write_text(self.text)
        else:
            good = {"cmd_template": "touch {marker}", "marker": str(tmp_path / "task-ran")}
            data = {"ensembles": {"good": good, BAD: self.bad}, **self.top_level}
            path.write_text(json.dumps(data, indent=2).replace(TMP, str(tmp_path)))
        return path


#: Stands for the test's tmp_path in the values of a Case.
TMP = "@TMP@"


def option_case(options: dict, *expected: str, **kwargs) -> Case:
    """An ensemble that is good but for ``options``."""
    return Case(bad={"cmd_template": "true {a}", "a": [1, 2, 3], **options}, expected=expected,
                **kwargs)


TRAILING_COMMA_JSON = """\
{
  "ensembles": {
    "sweep_bad": {
      "cmd_template": "true {a}",
      "a": [1, 2],
    }
  }
}
"""

BAD_INDENT_YAML = """\
ensembles:
  sweep_bad:
    cmd_template: "true {a}"
   a: [1, 2]
"""

CASES = {
    "malformed-json": Case(text=TRAILING_COMMA_JSON, expected=("line 6",),
                           names_ensemble=False),
    "malformed-yaml": Case(text=BAD_INDENT_YAML, suffix=".yaml", expected=("line 4",),
                           names_ensemble=False),
    "unknown-key": Case(bad={"cmd_template": "true {a}", "a": [1], "ppnn": 17},
                        expected=("ppnn", "17")),
    "unknown-top-level-key": Case(bad={"cmd_template": "true"},
                                  top_level={"extra_key": "surprise"},
                                  expected=("extra_key", "surprise"), names_ensemble=False),
    "one-to-one-lengths": Case(
        bad={"cmd_template": "true {alpha} {beta}", "alpha": ["p"] * 7, "beta": ["q"] * 4,
             "relation": "one-to-one"},
        expected=("relation", "alpha", "beta", "7", "4")),
    "ppn-larger-than-node": Case(bad={"cmd_template": "true {a}", "a": [1], "ppn": 3},
                                 expected=("ppn", "3", "2"), names_file=False,
                                 error=ResourceError),
    "unparsable-expression": Case(bad={"cmd_template": "true {temperature}",
                                       "temperature": "linspace(0, 10"},
                                  expected=("temperature", "linspace(0, 10")),
    "unknown-function": Case(bad={"cmd_template": "true {temperature}",
                                  "temperature": "foo(1,2)"},
                             expected=("temperature", "foo(1,2)")),
    "placeholder-without-parameter": Case(bad={"cmd_template": "true {a} {nosuch}", "a": [1]},
                                          expected=("cmd_template", "nosuch")),
    "missing-executable": Case(bad={"cmd_template": "/no/such/prog {a}", "a": [1]},
                               expected=("cmd_template", "/no/such/prog")),
    "lists-without-relation": Case(bad={"cmd_template": "true {a} {b}", "a": [1, 2],
                                        "b": [3, 4]},
                                   expected=("relation",)),
    "invalid-relation": Case(bad={"cmd_template": "true {a} {b}", "a": [1, 2], "b": [3, 4],
                                  "relation": "all-to-all"},
                             expected=("relation", "all-to-all")),
    # 14: wrong types that gave a traceback
    "run_dir-number": option_case({"run_dir": 5}, "run_dir", "5", "string"),
    "run_dir-list": option_case({"run_dir": ["a"]}, "run_dir", "['a']", "string"),
    "stdout_file-number": option_case({"stdout_file": 7}, "stdout_file", "7", "string"),
    "stderr_file-list": option_case({"stderr_file": ["e.txt"]}, "stderr_file", "['e.txt']"),
    "cpu_affinity-nested-list": option_case({"cpu_affinity": [[0, 1]]}, "cpu_affinity",
                                            "[[0, 1]]", "not a CPU id"),
    # 16: accepted silently
    "env-null-value": option_case({"env": {"A": None}}, "env.A", "None",
                                  "string or a finite number"),
    "env-list-value": option_case({"env": {"A": [1, 2]}}, "env.A", "[1, 2]"),
    "env-dict-value": option_case({"env": {"A": {"b": 1}}}, "env.A", "{'b': 1}"),
    "env-bool-value": option_case({"env": {"A": True}}, "env.A", "True"),
    "env-nan-value": option_case({"env": {"A": float("nan")}}, "env.A", "nan"),
    "env-empty-name": option_case({"env": {"": "x"}}, "'env'", "''", "variable name"),
    "env-name-starts-with-digit": option_case({"env": {"1A": "x"}}, "'env'", "'1A'"),
    "env-name-with-equals": option_case({"env": {"A=B": "x"}}, "'env'", "'A=B'"),
    "env-name-with-nul": option_case({"env": {"A\0B": "x"}}, "'env'", "'A\\x00B'"),
    "env-value-with-nul": option_case({"env": {"A": "x\0y"}}, "env.A", "NUL"),
    "env-not-a-mapping": option_case({"env": ["A=1"]}, "'env'", "['A=1']", "mapping"),
    "cpu_affinity-twice": option_case({"cpu_affinity": [0, 0]}, "cpu_affinity", "[0, 0]",
                                      "more than once"),
    "cpu_affinity-fraction": option_case({"cpu_affinity": [1.5]}, "cpu_affinity", "1.5"),
    "cpu_affinity-bool": option_case({"cpu_affinity": [True]}, "cpu_affinity", "True"),
    "cpu_affinity-negative": option_case({"cpu_affinity": [-1]}, "cpu_affinity", "-1"),
    "cpu_affinity-reversed-range": option_case({"cpu_affinity": "5-2"}, "cpu_affinity",
                                               "'5-2'", "low <= high"),
    "cpu_affinity-not-an-id": option_case({"cpu_affinity": "0,x"}, "cpu_affinity", "'0,x'"),
    "gpu_affinity-fraction": option_case({"gpu_affinity": [1.5]}, "gpu_affinity", "1.5"),
    "gpu_affinity-bool": option_case({"gpu_affinity": [True]}, "gpu_affinity", "True"),
    "gpu_affinity-null": option_case({"gpu_affinity": [None]}, "gpu_affinity", "None"),
    "timeout-nan": option_case({"timeout": float("nan")}, "timeout", "nan", "finite"),
    "timeout-infinite": option_case({"timeout": float("inf")}, "timeout", "inf", "finite"),
    "timeout-bool": option_case({"timeout": True}, "timeout", "True"),
    "estimated_runtime-nan": option_case({"estimated_runtime": float("nan")},
                                         "estimated_runtime", "nan", "finite"),
    "estimated_runtime-infinite": option_case({"estimated_runtime": float("inf")},
                                              "estimated_runtime", "inf"),
    "estimated_runtime-negative": option_case({"estimated_runtime": -5}, "estimated_runtime",
                                              "-5", ">= 0"),
    "ngpus_per_process-bool": option_case({"ngpus_per_process": True}, "ngpus_per_process",
                                          "True"),
    "ngpus_per_process-fraction": option_case({"ngpus_per_process": 0.5}, "ngpus_per_process",
                                              "0.5", "SystemConfig.gpus"),
    "nnodes-bool": option_case({"nnodes": True}, "nnodes", "True", "whole number"),
    "nnodes-fraction": option_case({"nnodes": 1.5}, "nnodes", "1.5"),
    "nnodes-negative": option_case({"nnodes": -2}, "nnodes", "-2"),
    "ppn-null": option_case({"ppn": None}, "ppn", "None"),
    "ppn-text": option_case({"ppn": "2"}, "ppn", "'2'"),
    "retries-bool": option_case({"retries": True}, "retries", "True"),
    "retries-negative": option_case({"retries": -1}, "retries", "-1"),
    "retries-fraction": option_case({"retries": 0.5}, "retries", "0.5"),
    # 17: found only when each task started
    "run_dir-missing": option_case({"run_dir": f"{TMP}/no-such-dir"}, "run_dir",
                                   "no-such-dir", "does not exist"),
    "run_dir-missing-for-one-value": option_case(
        {"run_dir": f"{TMP}/runs/{{a}}"}, "run_dir", "runs/2", "does not exist", "sweep_bad-1",
        make=("runs/1/", "runs/3/")),
    "run_dir-is-a-file": option_case({"run_dir": f"{TMP}/plain"}, "run_dir", "not a directory",
                                     make=("plain",)),
    "run_dir-empty": option_case({"run_dir": ""}, "run_dir", "''", "empty"),
    "stdout_file-is-a-directory": option_case({"stdout_file": f"{TMP}/outdir"}, "stdout_file",
                                              "outdir", "is a directory", make=("outdir/",)),
    "stdout_file-in-a-relative-directory-that-is-one": option_case(
        {"run_dir": TMP, "stdout_file": "out-{a}"}, "stdout_file", "out-2", "is a directory",
        make=("out-2/",)),
    "stderr_file-under-a-file": option_case({"stderr_file": f"{TMP}/plain/err-{{a}}.txt"},
                                            "stderr_file", "plain", "is a file",
                                            make=("plain",)),
    "env-variable-too-large": option_case({"env": {"BIG": "x" * 200_000}}, "env",
                                          "BIG", "131072 bytes"),
    "env-too-large-in-all": option_case(
        {"env": {f"BIG{i}": "x" * 100_000 for i in range(30)}}, "env", "ARG_MAX"),
    "command-too-long": Case(bad={"cmd_template": "true " + "x" * 200_000},
                             expected=("cmd_template", "131072 bytes")),
    # 19: messages that were wrong, doubled or megabytes long
    "cpu_affinity-huge-range": option_case({"cpu_affinity": "0-1000000"}, "cpu_affinity",
                                           "'0-1000000'", "more ids than any node"),
    "cpu_affinity-long-list": option_case({"cpu_affinity": list(range(100_000))},
                                          "cpu_affinity", "[0, 1, 2", "100000 ids"),
    "run_dir-missing-for-one-value-of-a-product": Case(
        bad={"cmd_template": "true {a} {b}", "a": list(range(40)), "b": "range(0, 1000)",
             "relation": "many-to-many", "run_dir": f"{TMP}/runs/{{a}}"},
        expected=("run_dir", "runs/37", "does not exist"),
        make=tuple(f"runs/{a}/" for a in range(40) if a != 37)),
    "cpu_affinity-not-on-the-node": option_case(
        {"cpu_affinity": list(range(5000))}, "cpu_affinity", "2,3,4", "not among",
        names_file=False, error=ResourceError),
}

#: Error lines longer than this are unreadable (the issue saw a 7.9 MB one).
MAX_MESSAGE = 2000


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request) -> Case:
    return CASES[request.param]


def expected_in_message(case: Case, path: Path) -> list[str]:
    expected = list(case.expected)
    if case.names_file:
        expected.append(str(path))
    if case.names_ensemble:
        expected.append(BAD)
    return expected


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ensemble_launcher.cli", "run", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)


def test_api_rejects_bad_input_before_writing_anything(case, tmp_path):
    path = case.write(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        EnsembleLauncher(str(path), SystemConfig(ncpus=2), out_dir=out)
    assert isinstance(info.value, case.error)
    message = str(info.value)
    for part in expected_in_message(case, path):
        assert part in message
    assert not out.exists()
    assert not (tmp_path / "task-ran").exists()


def check_cli_rejects(case: Case, tmp_path: Path, run) -> None:
    path = case.write(tmp_path)
    system = tmp_path / "system.json"
    system.write_text(json.dumps({"ncpus": 2}))
    written = files_under(tmp_path)
    outcome = run(["run", str(path), "--out", str(tmp_path / "cli"), "--system-config",
                   str(system)], tmp_path)
    stderr = outcome.stderr
    assert outcome.exit_code == 2, stderr
    assert stderr.startswith("el: error:")
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert len(stderr) < MAX_MESSAGE
    for part in expected_in_message(case, path):
        assert part in stderr
    assert files_under(tmp_path) == written


def files_under(path: Path) -> set[Path]:
    return set(path.rglob("*"))


def test_cli_rejects_bad_input_with_status_2_and_one_line_of_error(case, tmp_path):
    check_cli_rejects(case, tmp_path, run_in_process)


#: Cases also run through a real ``el`` process (all run in-process, which is faster).
REAL_PROCESS = ["malformed-json", "unknown-key", "ppn-larger-than-node", "run_dir-number",
                "env-null-value", "timeout-nan", "run_dir-missing", "cpu_affinity-long-list"]


@pytest.mark.parametrize("name", REAL_PROCESS)
def test_real_el_process_rejects_bad_input_with_status_2_and_one_line(name, tmp_path):
    check_cli_rejects(CASES[name], tmp_path, run_subprocess)


def test_cli_ppn_check_uses_the_system_config_file(tmp_path):
    path = CASES["ppn-larger-than-node"].write(tmp_path)
    system = tmp_path / "system.json"
    system.write_text(json.dumps({"ncpus": 3}))
    out = tmp_path / "cli"
    proc = run_cli(tmp_path, str(path), "--out", str(out), "--system-config", str(system),
                   "--no-pin", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert out.is_dir()
    assert (tmp_path / "task-ran").exists()


def test_cli_rejects_launcher_config_with_unknown_key(tmp_path):
    ensemble = tmp_path / "ensemble.json"
    ensemble.write_text(json.dumps({"ensembles": {"e": {"cmd_template": "touch {m}",
                                                        "m": str(tmp_path / "task-ran")}}}))
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps({"report_intervall": 3}))
    out = tmp_path / "cli"
    proc = run_cli(tmp_path, str(ensemble), "--launcher-config", str(config), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("el: error:")
    assert "Traceback" not in proc.stderr
    for part in (str(config), "report_intervall", "valid keys", "report_interval", "nlevels"):
        assert part in proc.stderr
    assert not out.exists()
    assert not (tmp_path / "task-ran").exists()


def run_with_system_config(tmp_path: Path, text: str) -> tuple[Path, subprocess.CompletedProcess]:
    """A real ``el run`` of a good ensemble with this system.yaml."""
    ensemble = CASES["ppn-larger-than-node"].write(tmp_path)
    config = tmp_path / "system.yaml"
    config.write_text(text)
    return config, run_cli(tmp_path, str(ensemble), "--system-config", str(config),
                           "--out", str(tmp_path / "cli"))


def test_cli_rejects_system_config_with_unknown_key(tmp_path):
    config, proc = run_with_system_config(tmp_path, "ncpu: 4\n")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("el: error:")
    assert str(config) in proc.stderr and "ncpu" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cli").exists()


def test_system_config_ncpus_disagreeing_with_cpus_is_rejected():
    with pytest.raises(ValidationError, match="ncpus"):
        SystemConfig(ncpus=2, cpus=[0, 1, 2])


def test_valid_file_next_to_the_bad_cases_is_accepted(tmp_path):
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps({"ensembles": {"good": {"cmd_template": "true {a}", "a": [1],
                                                       "ppn": 2}}}))
    launcher = EnsembleLauncher(str(path), SystemConfig(ncpus=2), out_dir=tmp_path / "run")
    assert launcher.tasks.total == 1
    assert not (tmp_path / "run").exists()


def test_output_files_in_directories_still_to_be_made_are_accepted(tmp_path):
    """The checks before the run refuse what cannot work, not what tasks create."""
    (tmp_path / "work").mkdir()
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps({"ensembles": {"e": {
        "cmd_template": "echo {a}", "a": [1, 2], "run_dir": str(tmp_path / "work"),
        "stdout_file": "logs/{a}/out.txt", "env": {"N": 3, "NAME": "x{a}"}}}}))
    proc = run_cli(tmp_path, str(path), "--out", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "work" / "logs" / "2" / "out.txt").read_text() == "2\n"


SYSTEM_CASES = {
    "gpus-null": ({"gpus": [None]}, "'gpus'", "None"),
    "gpus-fraction": ({"gpus": [1.5]}, "'gpus'", "1.5"),
    "gpus-bool": ({"gpus": [True]}, "'gpus'", "True"),
    "cpus-twice": ({"cpus": [0, 0]}, "'cpus'", "more than once"),
    "cpus-bool": ({"cpus": [True, 1]}, "'cpus'", "True"),
    "cpus-huge-range": ({"cpus": "0-99999999"}, "'cpus'", "'0-99999999'"),
    "cpus-long-list": ({"cpus": list(range(100_000))}, "'cpus'", "100000 ids"),
    "ncpus-bool": ({"ncpus": True}, "'ncpus'", "True"),
    "ncpus-beyond-any-node": ({"ncpus": 10**9}, "'ncpus'", "1000000000"),
    "ncpus-disagrees": ({"ncpus": 3, "cpus": [0, 1]}, "'ncpus'", "value 3"),
}
LAUNCHER_CASES = {
    "walltime-nan": ({"walltime": float("nan")}, "'walltime'", "nan"),
    "walltime-infinite": ({"walltime": float("inf")}, "'walltime'", "inf"),
    "report_interval-infinite": ({"report_interval": float("inf")}, "'report_interval'", "inf"),
    "kill_grace-nan": ({"kill_grace": float("nan")}, "'kill_grace'", "nan"),
    "retries-bool": ({"retries": True}, "'retries'", "True"),
    "nlevels-bool": ({"nlevels": True}, "'nlevels'", "True"),
    "nchildren-fraction": ({"nchildren": 1.5}, "'nchildren'", "1.5"),
    "gpu_selector-leading-digit": ({"gpu_selector": "1GPU"}, "'gpu_selector'", "'1GPU'"),
    "mpi_args-nul": ({"mpi_args": ["-x\0y"]}, "'mpi_args'", "NUL"),
    "retry_on-unknown-reason": ({"retry_on": ["oops", "oops"]}, "'retry_on.0'", "'oops'"),
    "several-problems": ({"retries": -1, "walltime": "soon", "comm_name": 3, "x": 1,
                          "y": 2}, "'retries'", "and 2 more problem(s)"),
}


@pytest.mark.parametrize(("flag", "content", "key", "value"), [
    *(("--system-config", *case) for case in SYSTEM_CASES.values()),
    *(("--launcher-config", *case) for case in LAUNCHER_CASES.values()),
], ids=[*SYSTEM_CASES, *LAUNCHER_CASES])
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_bad_config_value_is_one_line_naming_file_key_and_value(flag, content, key, value,
                                                                suffix, tmp_path):
    ensemble = CASES["ppn-larger-than-node"].write(tmp_path)
    config = tmp_path / f"config{suffix}"
    config.write_text(json.dumps(content) if suffix == ".json" else yaml.safe_dump(content))
    written = files_under(tmp_path)
    outcome = run_in_process(["run", str(ensemble), flag, str(config), "--out",
                              str(tmp_path / "cli")], tmp_path)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.stderr.startswith("el: error:") and outcome.stderr.count("\n") == 1
    assert len(outcome.stderr) < MAX_MESSAGE
    for part in (str(config), key, value):
        assert part in outcome.stderr
    assert files_under(tmp_path) == written


def test_gpus_null_gets_one_clean_line_from_a_real_el(tmp_path):
    config, proc = run_with_system_config(tmp_path, "gpus: [null]\n")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.count("'gpus") == 1, proc.stderr
    assert "valid string" not in proc.stderr and "valid integer" not in proc.stderr
    assert str(config) in proc.stderr and "None" in proc.stderr


@pytest.mark.parametrize("walltime", ["nan", "inf", "1e999", "-60", "0", "soon"])
def test_walltime_option_must_be_a_finite_duration(walltime, tmp_path):
    ensemble = CASES["ppn-larger-than-node"].write(tmp_path)
    outcome = run_in_process(["run", str(ensemble), "--walltime", walltime, "--out",
                              str(tmp_path / "cli")], tmp_path)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.stderr.count("\n") == 1
    assert "--walltime" in outcome.stderr and repr(walltime) in outcome.stderr
    assert not (tmp_path / "cli").exists()


def test_walltime_nan_from_a_real_el(tmp_path):
    ensemble = CASES["ppn-larger-than-node"].write(tmp_path)
    proc = run_cli(tmp_path, str(ensemble), "--walltime", "nan", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "el: error: --walltime: value 'nan': not a duration like 3600 or " \
        "01:00:00 (a finite time > 0)\n"


@pytest.mark.parametrize(("options", "named"), [
    ({"nnodes": True}, "nnodes"), ({"ppn": 0}, "ppn"), ({"ngpus_per_process": 0.5}, "ngpus"),
    ({"retries": True}, "retries"), ({"timeout": float("inf")}, "timeout"),
    ({"timeout": float("nan")}, "timeout"), ({"estimated_runtime": float("nan")}, "estimated"),
    ({"estimated_runtime": -1.0}, "estimated"), ({"cpu_affinity": [0, 0]}, "more than once"),
    ({"cpu_affinity": [1.5]}, "1.5"), ({"cpu_affinity": [[0]]}, "[0]"),
    ({"cpu_affinity": "5-2"}, "5-2"), ({"cpu_affinity": "0-10000000000"}, "range"),
    ({"gpu_affinity": [True]}, "True"), ({"env": {"A": None}}, "None"),
    ({"env": {"1A": "x"}}, "1A"), ({"env": {"A=B": "x"}}, "A=B"), ({"env": {"A": [5]}}, "[5]"),
    ({"run_dir": 5}, "run_dir"), ({"run_dir": ""}, "empty"), ({"stdout_file": ["o"]}, "['o']"),
    ({"stderr_file": "e\0"}, "NUL"),
])
def test_task_refuses_bad_values_in_python(options, named):
    with pytest.raises(ConfigError, match=re.escape(named)) as info:
        Task(task_id="t1", executable="true", **options)
    assert str(info.value).startswith("Task 't1': ")
    assert len(str(info.value)) < 300


def test_task_keeps_good_values_and_normalizes_them():
    task = Task(task_id="t1", executable="true", nnodes=2.0, cpu_affinity="0,2-3",
                gpu_affinity=[0, "1.1"], timeout=5, estimated_runtime=0, env={"A_1": "x"})
    assert (task.nnodes, task.cpu_affinity, task.gpu_affinity) == (2, [0, 2, 3], ["0", "1.1"])
    assert (task.timeout, task.estimated_runtime) == (5.0, 0.0)


@pytest.mark.parametrize(("options", "named"), [
    ({"run_dir": "{tmp}/missing"}, "run_dir: the directory"),
    ({"stdout_file": "{tmp}"}, "stdout_file:"),
    ({"stderr_file": "{tmp}/plain/err"}, "stderr_file:"),
    ({"env": {"BIG": "x" * 200_000}}, "env: the environment variable BIG"),
    ({"executable": "true " + "x" * 200_000}, "command: the command line"),
])
def test_python_tasks_that_could_not_start_are_refused_before_the_run(options, named,
                                                                       tmp_path):
    (tmp_path / "plain").write_text("")
    options = {k: v.format(tmp=tmp_path) if isinstance(v, str) and len(v) < 100 else v
               for k, v in options.items()}
    tasks = {"ok": Task(task_id="ok", executable=f"touch {tmp_path / 'task-ran'}"),
             "t": Task(task_id="t", **{"executable": "true", **options})}
    with pytest.raises(ConfigError, match=re.escape(f"task 't': {named}")):
        EnsembleLauncher(tasks, SystemConfig(ncpus=2), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "task-ran").exists()
