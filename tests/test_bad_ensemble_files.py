"""Ensemble files that once gave a traceback, a crash mid-run or silence (issue 9, cases 14,
15, 16, 18, 19), and their siblings: each is now one error before anything runs.

Every case is a real file under a fresh directory, run through ``el run``
(``check_rejected`` from the property tests: exit status 2, one line naming the file, the
key and the value, no traceback, nothing written); a few also through a real process.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input_properties import Bad, check_rejected, named

from ensemble_launcher.ensemble import EnsembleSpec, load_tasks, params
from ensemble_launcher.ensemble.programs import _SHELL_CHARS, command_argv
from ensemble_launcher.errors import EnsembleFileError


def parameter(value, *also: str, make: tuple[str, ...] = ()) -> Bad:
    """An ensemble whose parameter ``a`` has ``value``; the error must name a and it."""
    return Bad(f"a={value!r:.60}", {"cmd_template": "true {a}", "a": value},
               **named("a", value, also=also, make=make))


# -- 14: expressions that cannot give values -----------------------------------------------

EXPRESSIONS = [
    parameter("linspace('a','b',3)", "start must be a number"),
    parameter("linspace(0, 1, 3, endpoint='no')", "endpoint must be True or False"),
    parameter("linspace(0, 1, 2.5)", "num must be a whole number"),
    parameter("linspace(0, 1, -3)", "num must be a whole number >= 0"),
    parameter("linspace(True, 2, 3)", "start must be a number"),
    parameter("linspace(-1e308, 1e308, 3)", "too wide for a float"),
    parameter("linspace(0, 1, 1000000000000000000000000000000)", "at most"),
    parameter("linspace(0, 1)", "linspace(start, stop, num", "'num'"),
    parameter("linspace(0, 1, 3, foo=1)", "unexpected keyword argument 'foo'"),
    parameter("linspace(0, 1, **{'num': 3})", "** arguments"),
    parameter("linspace({[1]: 2}, 1, 3)", "literal numbers or strings"),
    parameter("linspace(" + "-" * 100_000 + "1, 2, 3)", "nested too deeply"),
    parameter("logspace(0, 1000, 3)", "too large for a float"),
    parameter("logspace(0, 1, 3, base='x')", "base must be a number"),
    parameter("logspace(0, 1, 3, base=-2)", "base must be > 0"),
    parameter("geomspace(0, 1, 3)", "start and stop must be > 0"),
    parameter("geomspace(1, 1e999, 3)", "finite"),
    parameter("range(0, 10, 0)", "step must not be 0"),
    parameter("range(1.5)", "whole number"),
    parameter("range(1000000000000000000000000000000)", "more than"),
    parameter("range(1, 2, 3, 4)", "too many positional arguments"),
    parameter("arange(0, 1e999)", "finite"),
    parameter("arange(0, 1, 1e-300)", "at most"),
    parameter("arange(0, 1, 0)", "step must not be 0"),
    parameter("arange(0, 1000000000000000000000000000000)", "at most"),
    parameter("arange(-1e308, 1e308, 1e-308)", "more than"),
    parameter("glob(3)", "pattern must be a string"),
    parameter("glob('a\\x00b')", "NUL"),
    parameter("lines(3)", "path must be a string"),
    parameter("lines('a\\x00b')", "NUL"),
    parameter("lines('@TMP@/folder')", "not a regular file", make=("folder/",)),
    parameter(f"lines({sys.executable!r})", "not UTF-8 text"),
    parameter("[None, 1]", "value 0 is null"),
]


@pytest.mark.parametrize("bad", EXPRESSIONS, ids=[b.label for b in EXPRESSIONS])
def test_expression_that_cannot_give_values_is_rejected(bad):
    check_rejected(bad)


VALUES = [
    parameter([1, None, 3], "value 1 is null"),
    parameter([1, {"x": 1}], "value 1 is dict"),
    parameter([[1], 2], "value 0 is list"),
    parameter(["x\0y"], "NUL"),
    parameter(["ok", "\ud800"], "cannot be encoded as UTF-8"),
]


@pytest.mark.parametrize("bad", VALUES, ids=[b.label for b in VALUES])
def test_value_that_cannot_become_command_text_is_rejected(bad):
    check_rejected(bad)


def test_many_to_many_product_beyond_what_can_be_counted_is_rejected():
    big = "range(10000000000)"
    check_rejected(Bad("product", {"cmd_template": "true {a} {b} {c}", "a": big, "b": big,
                                   "c": big, "relation": "many-to-many"},
                       key="relation", values=("many-to-many",), also=("1e+30", "at most")))


def test_ensembles_beyond_what_can_be_counted_together_are_rejected():
    huge = {"cmd_template": "true {a}", "a": "range(6000000000000000000)"}
    raw = json.dumps({"ensembles": {"one": huge, "two": huge}}).encode()
    check_rejected(Bad("two huge ensembles", raw=raw, also=("in all", "at most")))


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_too_deep_to_parse_is_rejected():
    raw = b'{"ensembles": {"e": {"cmd_template": "true {a}", "a": ' + nested(20_000) + b"}}}"
    check_rejected(Bad("JSON 20,000 deep", raw=raw, also=("nested more than",)))
    yaml_raw = b"ensembles:\n  e:\n    cmd_template: true {a}\n    a: " + nested(20_000)
    check_rejected(Bad("YAML 20,000 deep", raw=yaml_raw, also=("nested more than",)),
                   ".yaml")


def test_nesting_that_parses_but_is_too_deep_names_where():
    raw = b'{"ensembles": {"e": {"cmd_template": "true {a}", "a": ' + nested(150) + b"}}}"
    check_rejected(Bad("JSON 150 deep", raw=raw, key="a[0][0]", also=("'e'", "nested")))


def test_yaml_that_contains_itself_is_rejected():
    raw = b"ensembles:\n  e: &x\n    cmd_template: 'true'\n    env: {A: *x}\n"
    check_rejected(Bad("YAML cycle", raw=raw, key="env.A", also=("contains itself",)), ".yaml")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_file_that_is_not_utf8_is_rejected_naming_the_line(suffix):
    text = '{"ensembles": {"e":\n {"cmd_template": "echo caf\xe9"}}}' if suffix == ".json" \
        else "ensembles:\n  e:\n    cmd_template: echo caf\xe9\n"
    bad = Bad("latin-1", raw=text.encode("latin-1"), also=("not UTF-8", "byte 0xe9", "line "))
    check_rejected(bad, suffix)


def test_utf16_file_is_rejected_as_not_utf8():
    raw = json.dumps({"ensembles": {"e": {"cmd_template": "true"}}}).encode("utf-16")
    check_rejected(Bad("UTF-16", raw=raw, also=("not UTF-8",)))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_number_too_long_to_read_is_rejected(suffix):
    digits = "9" * 5000
    text = f'{{"ensembles": {{"e": {{"cmd_template": "true {{a}}", "a": [{digits}]}}}}}}'
    check_rejected(Bad("5000 digits", raw=text.encode(), also=("malformed", "4300")), suffix)


def test_lines_of_a_binary_file_names_the_file_and_byte(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"first\n" + bytes(range(32, 256)))
    spec = {"cmd_template": "true {a}", "a": f"lines({str(data)!r})"}
    with pytest.raises(EnsembleFileError, match=r"not UTF-8 text: byte 0x80 at line 2"):
        load_tasks({"ensembles": {"e": spec}})


# -- 15: what crashed the run once it had started ----------------------------------------------

TEMPLATES = [
    Bad("{a:d} with 'x' in the middle", {"cmd_template": "true {a:d}", "a": [1, "x", 3]},
        key="a", values=([1, "x", 3],), also=("{a:d}", "'x'", "value 1")),
    Bad("{a:.2f} in env", {"cmd_template": "true", "env": {"A": "{a:.2f}"}, "a": [1, "x", 2]},
        key="a", values=([1, "x", 2],), also=("env.A", "{a:.2f}")),
    Bad("{a:03d} in stdout_file", {"cmd_template": "true", "stdout_file": "out-{a:03d}",
                                   "a": [1, 2.5, 3]}, key="a", also=("stdout_file", "2.5")),
    Bad("{a:c} beyond unicode at the last value", {"cmd_template": "true {a:c}",
                                                  "a": "range(0, 2000000)"},
        key="a", values=("range(0, 2000000)",), also=("1999999",)),
    Bad("{b:d} with a many-to-many partner", {"cmd_template": "true {a} {b:d}", "a": [1, 2],
                                              "b": [1, "x"], "relation": "many-to-many"},
        key="b", also=("{b:d}", "'x'")),
]


@pytest.mark.parametrize("bad", TEMPLATES, ids=[b.label for b in TEMPLATES])
def test_value_a_format_spec_does_not_fit_is_found_before_the_run(bad):
    check_rejected(bad)


def test_format_spec_misfit_is_exit_2_from_a_real_el_process():
    check_rejected(TEMPLATES[0], subprocess_run=True)


def test_integer_too_long_for_text_is_found_before_the_run():
    with pytest.raises(EnsembleFileError, match="value 1 of a"):
        EnsembleSpec("e", {"cmd_template": "true {a}", "a": [1, 10**5000]})


NAMES = [
    Bad("YAML names 1 and '1'", raw=b"ensembles:\n  1: {cmd_template: 'true'}\n"
        b"  '1': {cmd_template: 'true'}\n", also=("two ensembles are named '1'",)),
    Bad("YAML name null", raw=b"ensembles:\n  null: {cmd_template: 'true'}\n",
        also=("must be a string",)),
    Bad("YAML name true", raw=b"ensembles:\n  true: {cmd_template: 'true'}\n",
        also=("must be a string",)),
    Bad("lone surrogate", raw=b'ensembles:\n  "\\ud800": {cmd_template: "true"}\n',
        also=("cannot be encoded as UTF-8",)),
    Bad("newline", raw=b'ensembles:\n  "a\\nb": {cmd_template: "true"}\n',
        also=("control characters",)),
    Bad("empty", raw=b'ensembles:\n  "": {cmd_template: "true"}\n', also=("non-empty",)),
    Bad("YAML key 1 in an ensemble", raw=b"ensembles:\n  e: {cmd_template: 'true', 1: 2}\n",
        key="1", also=("must be a string",)),
]


@pytest.mark.parametrize("bad", NAMES, ids=[b.label for b in NAMES])
def test_ensemble_name_that_cannot_make_task_ids_is_rejected(bad):
    check_rejected(bad, ".yaml")


def test_yaml_names_1_and_quoted_1_are_exit_2_from_a_real_el_process():
    check_rejected(NAMES[0], ".yaml", subprocess_run=True)


def test_json_name_with_lone_surrogate_is_rejected():
    raw = b'{"ensembles": {"\\ud800": {"cmd_template": "true"}}}'
    check_rejected(Bad("JSON lone surrogate", raw=raw, also=("cannot be encoded as UTF-8",)))


def test_yaml_number_as_only_name_makes_its_task_ids(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("ensembles:\n  1:\n    cmd_template: echo {a}\n    a: [5, 6]\n")
    assert [t.task_id for t in load_tasks(path)] == ["1-0", "1-1"]


# -- 16: duplicates that the parsers would drop silently ---------------------------------------

DUPLICATES = [
    (Bad("JSON key twice", raw=b'{"ensembles": {"e": {"cmd_template": "true {a}", '
         b'"a": [1], "a": [2]}}}', key="a", also=("'e'", "appears twice")), ".json"),
    (Bad("JSON ensemble twice", raw=b'{"ensembles": {"e": {"cmd_template": "true"}, '
         b'"e": {"cmd_template": "false"}}}', also=("'e'", "two ensembles have this name")),
     ".json"),
    (Bad("JSON top level twice", raw=b'{"ensembles": {"e": {"cmd_template": "true"}}, '
         b'"ensembles": {"f": {"cmd_template": "true"}}}', key="ensembles"), ".json"),
    (Bad("JSON env name twice", raw=b'{"ensembles": {"e": {"cmd_template": "true", '
         b'"env": {"A": "1", "A": "2"}}}}', key="env.A", also=("'e'",)), ".json"),
    (Bad("YAML key twice", raw=b"ensembles:\n  e:\n    cmd_template: true {a}\n    a: [1]\n"
         b"    a: [2]\n", key="a", also=("lines 4 and 5",)), ".yaml"),
    (Bad("YAML ensemble twice", raw=b"ensembles:\n  e: {cmd_template: 'true'}\n"
         b"  e: {cmd_template: 'false'}\n", key="e", also=("lines 2 and 3",)), ".yaml"),
]


@pytest.mark.parametrize(("bad", "suffix"), DUPLICATES, ids=[b.label for b, _ in DUPLICATES])
def test_key_written_twice_is_rejected(bad, suffix):
    check_rejected(bad, suffix)


def test_duplicate_key_is_exit_2_from_a_real_el_process():
    check_rejected(DUPLICATES[0][0], subprocess_run=True)


def test_yaml_merge_may_still_override_a_merged_key(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("ensembles:\n  e:\n    <<: {cmd_template: 'echo {a}', ppn: 1}\n"
                    "    ppn: 2\n    a: [1]\n")
    (task,) = load_tasks(path)
    assert (task.executable, task.ppn) == ("echo 1", 2)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "e.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(
        {"ensembles": {"e": {"cmd_template": "echo {a}", "a": [1]}}}).encode())
    assert [t.executable for t in load_tasks(path)] == ["echo 1"]


# -- 18: a long command is read in linear time -------------------------------------------------

def test_command_of_two_megabytes_gets_its_error_from_a_real_el_process():
    """Reading it once took time quadratic in a word's length (half a minute per MB); the
    subprocess timeout is only a guard against a hang."""
    big = Bad("2 MB command", {"cmd_template": "true " + "x" * 2_000_000},
              key="cmd_template", also=("exec takes at most",))
    check_rejected(big, subprocess_run=True)


PLAIN = st.text(st.sampled_from(list("ab =x\u00e9{}'\"\t\r")), max_size=40)


@settings(max_examples=2000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(PLAIN)
def test_command_without_shell_syntax_splits_as_shlex_would(command):
    assert _SHELL_CHARS.isdisjoint(command)
    try:
        words = shlex.split(command)
    except ValueError:
        words = []
    direct = bool(words) and "=" not in words[0]
    assert command_argv(command) == (words if direct else ["/bin/sh", "-c", command])


# -- 19: say what the template asks for that does not exist ------------------------------------

def misspelt(template: str, *also: str, **extra) -> Bad:
    return Bad(f"template {template!r}", {"cmd_template": template, "a": [1], **extra},
               key="a", values=([1],), also=also)


PLACEHOLDERS = [
    Bad("{zzz} beside a", {"cmd_template": "true {zzz}", "a": [1]}, key="cmd_template",
        values=("true {zzz}",), also=("{zzz}", "no key 'zzz'")),
    Bad("{aa} beside a", {"cmd_template": "true {aa}", "a": [1]}, key="cmd_template",
        also=("{aa}", "did you mean 'a'")),
    Bad("{zzz} in env", {"cmd_template": "true", "env": {"X": "{zzz}"}, "zz": [1]},
        key="env.X", also=("{zzz}", "did you mean 'zz'")),
    Bad("{zzz} in run_dir", {"cmd_template": "true {a}", "run_dir": "@TMP@/{zzz}",
                             "a": [1]}, key="run_dir", also=("{zzz}",)),
    misspelt("echo {a", "'{a'", "not closed"),
    misspelt("echo {a!r}", "'{a!r}'", "conversions"),
    misspelt("echo ${a}", "'${a}'", "shell"),
    misspelt("echo {a.real}", "'{a.real}'", "lookups"),
    misspelt("echo {a[0]}", "'{a[0]}'", "lookups"),
    misspelt("echo { a }", "'{ a }'", "no spaces"),
    misspelt("echo {a:{w}}", "'{a:{w}'", "format spec", w=[3]),
    misspelt("echo {{a}}", "'{{a}}'", "doubled braces"),
    Bad("ppnn", {"cmd_template": "true", "ppnn": 2}, key="ppnn", values=(2,),
        also=("did you mean 'ppn'",)),
]


@pytest.mark.parametrize("bad", PLACEHOLDERS, ids=[b.label for b in PLACEHOLDERS])
def test_template_mistake_is_named_with_a_close_match(bad):
    check_rejected(bad)


def test_zzz_placeholder_is_exit_2_from_a_real_el_process():
    check_rejected(PLACEHOLDERS[0], subprocess_run=True)


EMPTY_PATHS = [
    Bad("run_dir ''", {"cmd_template": "true", "run_dir": ""}, key="run_dir", values=("",)),
    Bad("run_dir from an empty value", {"cmd_template": "true {a}", "run_dir": "{d}",
                                        "a": [1], "d": ["@TMP@", ""],
                                        "relation": "many-to-many"},
        key="d", also=("value 1 is empty", "run_dir")),
    Bad("stdout_file ''", {"cmd_template": "true", "stdout_file": ""}, key="stdout_file",
        values=("",)),
]


@pytest.mark.parametrize("bad", EMPTY_PATHS, ids=[b.label for b in EMPTY_PATHS])
def test_empty_path_is_rejected_at_load(bad):
    check_rejected(bad)


# -- no expression raises anything but its own error -------------------------------------------

LITERALS = st.one_of(
    st.integers(), st.integers(min_value=-2**70, max_value=2**70),
    st.integers(min_value=10**300, max_value=10**4000), st.floats(),
    st.booleans(), st.none(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
    st.sampled_from([10**30, 1e308, -1e308, 5e-324, 0, 1, -1, 2, 0.5]),
)


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(params.FUNCTIONS)), st.lists(LITERALS, max_size=4),
       st.dictionaries(st.sampled_from(["endpoint", "base", "num", "step", "stop", "x"]),
                       LITERALS, max_size=2))
def test_any_call_gives_computable_values_or_an_expression_error(name, args, kwargs):
    text = f"{name}({', '.join([*map(repr, args), *(f'{k}={v!r}' for k, v in kwargs.items())])})"
    try:
        values = params.evaluate(text)
    except params.ExpressionError:
        return
    assert 0 <= len(values) <= params.MAX_VALUES
    if len(values):
        for value in (values[0], values[len(values) // 2], values[-1]):
            format(value, "")


def test_format_misfit_reaches_python_as_an_error_with_its_fields(tmp_path):
    """The same errors reach a Python caller as EnsembleFileError with its fields set."""
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"ensembles": {"e": {"cmd_template": "true {a:d}",
                                                    "a": [1, "x", 3]}}}))
    with pytest.raises(EnsembleFileError) as info:
        load_tasks(path)
    assert (info.value.file, info.value.ensemble, info.value.key) == (str(path), "e", "a")
    assert info.value.value == [1, "x", 3]


def test_huge_lazy_sweep_is_still_counted_not_checked_value_by_value(tmp_path):
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"ensembles": {"e": {"cmd_template": "true {a:d} {b:.1f}",
                                                    "a": "range(1000000)",
                                                    "b": "linspace(0, 1, 1000000)",
                                                    "relation": "many-to-many"}}}))
    proc = subprocess.run([sys.executable, "-c", "import sys; from ensemble_launcher.ensemble "
                           "import load_tasks; print(load_tasks(sys.argv[1]).total)",
                           str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(10**12)



def test_lone_surrogate_from_python_is_rejected_before_the_run():
    with pytest.raises(EnsembleFileError, match="value 1 holds a lone surrogate"):
        load_tasks({"ensembles": {"e": {"cmd_template": "true {a}", "a": ["ok", "\ud800"]}}})
    with pytest.raises(EnsembleFileError, match="UTF-8"):
        EnsembleSpec("\ud800", {"cmd_template": "true"})
