"""How parameter values reach a task: values read from files (``glob`` names, ``lines``
contents) arrive as data, one argument each, whatever they hold; values written in the
ensemble file are substituted as written. Real commands on real files with hostile names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ensemble_launcher import EnsembleLauncher
from ensemble_launcher.config import LauncherConfig
from ensemble_launcher.ensemble.programs import DOUBLE, SINGLE, WORD, quote_for
from ensemble_launcher.errors import EnsembleFileError

#: Names a file can have that mean something to a shell, or to a program's option parser.
HOSTILE = ["x;touch pwned;.txt", "$(touch pwned)", "`touch pwned`", "it's", 'say "hi"',
           "a b", "two  spaces", "new\nline", "-rf", "--help", "*", "~", "back\\slash",
           "ok && touch pwned", "'; touch pwned; '", "$HOME", "tab\there", "|touch pwned"]

ARGV = "import json, sys; sys.stdout.write(json.dumps(sys.argv[1:]))"
ENV_AND_CWD = ("import json, os, sys; "
               "sys.stdout.write(json.dumps([os.environ['NAME'], os.getcwd()]))")


def program(tmp_path: Path, code: str = ARGV) -> Path:
    """A script that prints what it received, as JSON."""
    path = tmp_path / "show.py"
    path.write_text(f"#!{sys.executable}\n{code}\n")
    path.chmod(0o755)
    return path


def hostile_files(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for name in HOSTILE:
        (data / name).write_text("")
    return data


def run(tmp_path: Path, ensemble: dict, nlevels: int = 0):
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"ensembles": {"e": {"run_dir": str(tmp_path), **ensemble}}}))
    nodes = ["localhost"] if nlevels else None
    return EnsembleLauncher(str(path), Nodes=nodes, out_dir=tmp_path / "run",
                            return_stdout=True,
                            launcher_config=LauncherConfig(nlevels=nlevels)).run()


def received(results) -> list:
    assert all(r.state == "succeeded" for r in results.values()), \
        [(r.task_id, r.stderr) for r in results.values() if r.state != "succeeded"]
    return [json.loads(results[f"e-{i}"].stdout) for i in range(len(results))]


def assert_not_pwned(tmp_path: Path) -> None:
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()


@pytest.mark.parametrize("template, prefix", [
    ("{exe} {f}", ""),
    ("{exe} '{f}'", ""),
    ('{exe} "{f}"', ""),
    ("{exe} --input={f}", "--input="),
    ("{exe} {f} | cat", ""),
    ('{exe} "$(printf %s {f})"', ""),
], ids=["plain", "single-quoted", "double-quoted", "option", "shell", "subshell"])
def test_file_names_from_glob_reach_the_program_as_one_argument_each(tmp_path, template,
                                                                     prefix):
    data = hostile_files(tmp_path)
    exe = program(tmp_path)
    results = run(tmp_path, {"cmd_template": template.replace("{exe}", str(exe)),
                             "f": f"glob('{data}/*')"})
    expected = sorted(str(data / name) for name in HOSTILE)
    assert received(results) == [[prefix + name] for name in expected]
    assert_not_pwned(tmp_path)


def test_file_names_are_data_in_a_tree_too(tmp_path):
    data = hostile_files(tmp_path)
    results = run(tmp_path, {"cmd_template": f"{program(tmp_path)} {{f}}",
                             "f": f"glob('{data}/*')"}, nlevels=1)
    assert received(results) == [[str(data / n)] for n in sorted(HOSTILE)]
    assert_not_pwned(tmp_path)


def test_lines_of_a_file_reach_the_program_as_one_argument_each(tmp_path):
    lines = [name for name in HOSTILE if "\n" not in name] + ['"$(touch pwned)"', "a  b  c"]
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{line}\n" for line in lines))
    results = run(tmp_path, {"cmd_template": f"{program(tmp_path)} {{line}} end",
                             "line": f"lines('{listing}')"})
    assert received(results) == [[line.strip(), "end"] for line in lines]
    assert_not_pwned(tmp_path)


def test_values_written_in_the_ensemble_file_are_substituted_as_written(tmp_path):
    """The user's own values are command text: a list value may hold several words (or
    shell syntax), and numbers appear as they print."""
    results = run(tmp_path, {"cmd_template": f"{program(tmp_path)} -a {{a}} {{opts}}",
                             "a": "linspace(0, 1, 2)", "opts": ["--flag x", "'one word'"],
                             "relation": "one-to-one"})
    assert received(results) == [["-a", "0.0", "--flag", "x"], ["-a", "1.0", "one word"]]


def test_a_quote_in_a_written_value_cannot_unquote_a_file_name(tmp_path):
    """An unbalanced quote in the user's own value breaks the command, but never turns
    the file name after it into shell code."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "x;touch pwned;.txt").write_text("")
    results = run(tmp_path, {"cmd_template": f"{program(tmp_path)} {{opt}} {{f}}",
                             "opt": ["it's"], "f": f"glob('{data}/*')",
                             "relation": "many-to-many"})
    assert results["e-0"].state == "failed"
    assert_not_pwned(tmp_path)


def test_env_run_dir_and_output_files_take_file_names_as_they_are(tmp_path):
    """No shell reads these: a name with a newline, quotes or $(...) is used unchanged."""
    dirs = tmp_path / "dirs"
    dirs.mkdir()
    for name in ("new\nline", "$(touch pwned)", "it's \"x\"", "-rf"):
        (dirs / name).mkdir()
    exe = program(tmp_path, ENV_AND_CWD)
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"ensembles": {"e": {
        "cmd_template": str(exe), "d": f"glob('{dirs}/*')", "env": {"NAME": "{d}"},
        "run_dir": "{d}", "stdout_file": "{d}/out.json"}}}))
    results = EnsembleLauncher(str(path), out_dir=tmp_path / "run").run()
    assert all(r.state == "succeeded" for r in results.values())
    for d in dirs.iterdir():
        assert json.loads((d / "out.json").read_text()) == [str(d), str(d)]
    assert_not_pwned(tmp_path)


@pytest.mark.parametrize("template, where", [
    ("echo `cat {f}`", "backquotes"),
    ("echo ${X:-{f}}", "${...}"),
    ("echo ok # {f}", "a comment"),
    ('echo "\\{f}"', "a backslash escape"),
])
def test_a_file_value_where_no_quoting_is_safe_is_refused_before_the_run(tmp_path, template,
                                                                         where):
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(EnsembleFileError) as err:
        run(tmp_path, {"cmd_template": template, "f": f"glob('{tmp_path}/*.txt')"})
    assert err.value.key == "cmd_template" and where in str(err.value)
    assert "{f}" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_written_value_that_would_unquote_a_file_value_is_refused_before_the_run(tmp_path):
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(EnsembleFileError) as err:
        run(tmp_path, {"cmd_template": "echo {opt} {f}", "opt": ["ok", "`"],
                       "f": f"glob('{tmp_path}/*.txt')", "relation": "many-to-many"})
    assert err.value.key == "opt" and "backquotes" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_nul_in_a_listed_line_is_refused_before_the_run(tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text("good\nbad\0line\n")
    with pytest.raises(EnsembleFileError) as err:
        run(tmp_path, {"cmd_template": "echo {line}", "line": f"lines('{listing}')"})
    assert err.value.key == "line" and "NUL" in str(err.value)
    assert not (tmp_path / "run").exists()


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=20))
def test_quoted_values_read_back_unchanged_in_every_quoting(value):
    """What /bin/sh makes of a quoted value, unquoted, in '...' and in "...", is the value."""
    commands = [f"printf %s {quote_for(WORD, value)}", f"printf %s '{quote_for(SINGLE, value)}'",
                f'printf %s "{quote_for(DOUBLE, value)}"']
    for command in commands:
        out = subprocess.run(["/bin/sh", "-c", command], capture_output=True,
                             env={**os.environ, "LC_ALL": "C.UTF-8"})
        assert out.stdout == value.encode("utf-8", "surrogateescape"), command
