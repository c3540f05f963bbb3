"""Bad input fails before any task starts, with one error naming file, ensemble, key, value."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError

from ensemble_launcher import EnsembleLauncher, SystemConfig
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

    def write(self, tmp_path: Path) -> Path:
        path = tmp_path / f"ensemble{self.suffix}"
        if self.text is not None:
            path.write_text(self.text)
        else:
            good = {"cmd_template": "touch {marker}", "marker": str(tmp_path / "task-ran")}
            data = {"ensembles": {"good": good, BAD: self.bad}, **self.top_level}
            path.write_text(json.dumps(data, indent=2))
        return path


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
}


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


def test_cli_rejects_bad_input_with_status_2_and_one_line_of_error(case, tmp_path):
    path = case.write(tmp_path)
    out = tmp_path / "cli"
    system = tmp_path / "system.json"
    system.write_text(json.dumps({"ncpus": 2}))
    proc = run_cli(tmp_path, str(path), "--out", str(out), "--system-config", str(system))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("el: error:")
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    for part in expected_in_message(case, path):
        assert part in proc.stderr
    assert not out.exists()
    assert not (tmp_path / "task-ran").exists()


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


def test_cli_rejects_system_config_with_unknown_key(tmp_path):
    ensemble = CASES["ppn-larger-than-node"].write(tmp_path)
    config = tmp_path / "system.yaml"
    config.write_text("ncpu: 4\n")
    proc = run_cli(tmp_path, str(ensemble), "--system-config", str(config),
                   "--out", str(tmp_path / "cli"))
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
