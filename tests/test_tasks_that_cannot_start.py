"""A task that cannot be built or started mid-run fails alone, as a result; the run goes on.

Checks before the run cover each value of each parameter and the first tasks of a sweep,
not every combination of a million-task product, so a few bad tasks can still surface
only when their turn comes. They must not stop the run nor make resume fail forever.
"""

from __future__ import annotations

import json
import subprocess

from test_cli import _el_command

from ensemble_launcher.ensemble.preflight import PREFLIGHT_TASKS
from ensemble_launcher.store import Results


def el(*args):
    return subprocess.run([*_el_command(), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=180)


def test_a_task_whose_values_together_cannot_be_quoted_fails_alone_and_resume_skips_it(
        tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "a.txt").touch()
    ensemble = tmp_path / "e.json"
    # ";" then "#" makes a comment of the file name's place: only that combination is bad.
    ensemble.write_text(json.dumps({"ensembles": {"e": {
        "cmd_template": "echo {a}{b} {f}", "a": [";", "ok"], "b": ["ok", "#"],
        "f": f"glob('{tmp_path}/inputs/*.txt')", "relation": "many-to-many"}}}))
    out = el("run", ensemble, "--out", tmp_path / "run")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    results = Results(tmp_path / "run")
    bad = results["e-1"]
    assert (bad.state, bad.reason) == ("failed", "launch")
    assert "task 1 cannot be built" in bad.exception and "comment" in bad.exception
    assert results["e-2"].state == results["e-3"].state == "succeeded"

    again = el("resume", tmp_path / "run")
    assert again.returncode == 1, again.stderr
    assert "Traceback" not in again.stderr
    assert len(list(Results(tmp_path / "run").attempts("e-2"))) == 1


def test_a_command_that_cannot_be_encoded_fails_as_a_launch_failure_not_a_lost_runner(
        tmp_path):
    """Characters 0xD800-0xDFFF are lone surrogates, which exec cannot take; they start
    past the tasks checked before the run."""
    first, surrogates = 0xD800 - PREFLIGHT_TASKS - 10, 4
    ensemble = tmp_path / "e.json"
    ensemble.write_text(json.dumps({"ensembles": {"e": {
        "cmd_template": "true {a:c}", "a": f"range({first}, {0xD800 + surrogates})"}}}))
    out = el("run", ensemble, "--out", tmp_path / "run")
    assert out.returncode == 1, out.stderr
    failed = list(Results(tmp_path / "run").failed())
    assert len(failed) == surrogates
    for result in failed:
        assert result.reason == "launch", result
        assert "surrogates not allowed" in result.exception
