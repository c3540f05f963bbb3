"""The bundled MPI examples build with mpicc and run with el run, as their README says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def el(*args):
    exe = shutil.which("el")
    cmd = [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=180)


def test_mpi_examples_build_and_run(tmp_path):
    subprocess.run([str(REPO / "examples/mpi/build.sh")], check=True, timeout=120,
                   capture_output=True)
    for name, count in (("basic", 6), ("sweep", 5)):
        out = el("run", f"examples/mpi/{name}.json", "--out", tmp_path / name,
                 "--return-stdout", "--json", tmp_path / f"{name}.json")
        assert out.returncode == 0, out.stderr
        results = json.loads((tmp_path / f"{name}.json").read_text()).values()
        assert len(results) == count
        for r in results:
            fields = dict(f.split("=") for f in r["stdout"].split())
            assert fields["ranks"] == "2" and abs(float(fields["pi"]) - 3.14159265) < 1e-4


def test_pipeline_stage_two_runs_after_stage_one(tmp_path):
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([str(REPO / "examples/mpi/pipeline.sh"), str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("n=")]
    assert [line.split()[0] for line in lines] == [
        "n=100", "n=1000", "n=10000", "n=100000", "n=1000000"]


def test_rules_examples_run_with_el_run(tmp_path):
    for name, groups in (("hello-world.yaml", {"sleep": 5, "echo": 5}),
                         ("refine.yaml", {"coarse": 20, "refine": 8})):
        out = el("run", f"examples/rules/{name}", "--out", tmp_path / name,
                 "--json", tmp_path / f"{name}.json")
        assert out.returncode == 0, out.stderr
        results = json.loads((tmp_path / f"{name}.json").read_text()).values()
        assert {r["state"] for r in results} == {"succeeded"}
        seen: dict[str, int] = {}
        for r in results:
            seen[r["ensemble"]] = seen.get(r["ensemble"], 0) + 1
        assert seen == groups


def test_the_local_provider_example_runs_the_bundled_sweep_in_blocks(tmp_path):
    out = el("run", "examples/sweep.json", "--launcher-config",
             "examples/providers/local.json", "--out", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    from ensemble_launcher.store import Results

    results = Results(tmp_path / "run")
    assert results.counts() == {"succeeded": 40}
    assert results.blocks() and all(b.state == "completed" for b in results.blocks())
