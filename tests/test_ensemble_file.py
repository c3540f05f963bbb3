"""Ensemble files as users write them: formats, sweeps, relations, ids, options, laziness."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ensemble_launcher.ensemble import EnsembleSpec, Task, load_tasks


def write_json(tmp_path: Path, ensembles: dict, name: str = "ensemble.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"ensembles": ensembles}, indent=2))
    return path


def write_yaml(tmp_path: Path, text: str, name: str = "ensemble.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def commands(tmp_path: Path, definition: dict) -> list[str]:
    tasks = list(load_tasks(write_json(tmp_path, {"e": definition})))
    return [t.executable for t in tasks]


def sweep(tmp_path: Path, expression) -> list[str]:
    return [cmd.split(" ", 1)[1] for cmd in commands(tmp_path, {"cmd_template": "echo {x}",
                                                                "x": expression})]


# -- formats -------------------------------------------------------------------------------


def test_json_file_with_several_ensembles_loads_in_file_order(tmp_path):
    path = write_json(tmp_path, {
        "first": {"cmd_template": "echo {a}", "a": [1, 2, 3]},
        "second": {"cmd_template": "echo {b}", "b": "range(4)"},
        "third": {"cmd_template": "echo hello"},
    })
    stream = load_tasks(path)
    assert stream.ensembles == {"first": 3, "second": 4, "third": 1}
    assert stream.total == 8
    assert [t.task_id for t in stream] == [
        "first-0", "first-1", "first-2", "second-0", "second-1", "second-2", "second-3",
        "third-0",
    ]


def test_yaml_file_with_several_ensembles_loads(tmp_path):
    path = write_yaml(tmp_path, """\
        ensembles:
          scan:
            nnodes: 1
            ppn: 1
            cmd_template: "echo -a {arg1} -b {arg2}"
            arg1: linspace(0, 10, 5)
            arg2: linspace(0, 1, 5)
            relation: one-to-one
          grid:
            cmd_template: echo {x} {y}
            x: [1, 2]
            y: [a, b, c]
            relation: many-to-many
        """)
    stream = load_tasks(path)
    assert stream.ensembles == {"scan": 5, "grid": 6}
    assert stream.total == 11
    tasks = list(stream)
    assert tasks[0].executable == "echo -a 0.0 -b 0.0"
    assert tasks[4].executable == "echo -a 10.0 -b 1.0"
    assert tasks[-1].executable == "echo 2 c"


def test_yml_suffix_is_read_as_yaml(tmp_path):
    path = write_yaml(tmp_path, """\
        ensembles:
          e:
            cmd_template: echo {n}
            n: [7, 8]
        """, name="ensemble.yml")
    assert [t.executable for t in load_tasks(path)] == ["echo 7", "echo 8"]


def test_json_and_yaml_spellings_of_one_ensemble_give_the_same_tasks(tmp_path):
    json_path = write_json(tmp_path, {"e": {"cmd_template": "echo {a} {b}", "a": "range(3)",
                                            "b": [0.5, 1.5], "relation": "many-to-many"}})
    yaml_path = write_yaml(tmp_path, """\
        ensembles:
          e:
            cmd_template: echo {a} {b}
            a: range(3)
            b: [0.5, 1.5]
            relation: many-to-many
        """)
    from_json = [(t.task_id, t.executable) for t in load_tasks(json_path)]
    from_yaml = [(t.task_id, t.executable) for t in load_tasks(yaml_path)]
    assert from_json == from_yaml
    assert len(from_json) == 6


def test_path_object_and_string_path_both_load(tmp_path):
    path = write_json(tmp_path, {"e": {"cmd_template": "echo {a}", "a": [1, 2]}})
    assert load_tasks(path).total == load_tasks(str(path)).total == 2


def test_stream_records_its_source_file(tmp_path):
    path = write_json(tmp_path, {"e": {"cmd_template": "echo {a}", "a": [1]}})
    assert load_tasks(path).source == str(path)


# -- parameter values ----------------------------------------------------------------------


def test_linspace_renders_evenly_spaced_floats(tmp_path):
    assert sweep(tmp_path, "linspace(0, 10, 5)") == ["0.0", "2.5", "5.0", "7.5", "10.0"]


def test_range_renders_integers(tmp_path):
    assert sweep(tmp_path, "range(2, 11, 4)") == ["2", "6", "10"]


def test_range_with_one_argument_counts_from_zero(tmp_path):
    assert sweep(tmp_path, "range(3)") == ["0", "1", "2"]


def test_arange_with_float_step(tmp_path):
    assert sweep(tmp_path, "arange(0, 1, 0.25)") == ["0.0", "0.25", "0.5", "0.75"]


def test_arange_with_integer_arguments_yields_integers_like_numpy(tmp_path):
    assert sweep(tmp_path, "arange(0, 3)") == ["0", "1", "2"]


def test_logspace_renders_powers_of_ten(tmp_path):
    assert sweep(tmp_path, "logspace(0, 3, 4)") == ["1.0", "10.0", "100.0", "1000.0"]


def test_logspace_with_base(tmp_path):
    assert sweep(tmp_path, "logspace(0, 3, 4, base=2)") == ["1.0", "2.0", "4.0", "8.0"]


def test_geomspace_is_geometric_and_hits_both_ends_exactly(tmp_path):
    values = [float(v) for v in sweep(tmp_path, "geomspace(1, 1000, 4)")]
    assert values[0] == 1.0
    assert values[-1] == 1000.0
    assert values == pytest.approx([1.0, 10.0, 100.0, 1000.0])


def test_lines_reads_one_value_per_nonblank_line(tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text("alpha.in\n\n  beta.in  \ngamma.in\n")
    assert sweep(tmp_path, f"lines('{listing}')") == ["alpha.in", "beta.in", "gamma.in"]


def test_glob_yields_matching_paths_sorted(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("c.in", "a.in", "b.in", "skip.out"):
        (data / name).write_text("")
    assert sweep(tmp_path, f"glob('{data}/*.in')") == [
        str(data / "a.in"), str(data / "b.in"), str(data / "c.in")]


def test_explicit_list_keeps_values_and_order(tmp_path):
    assert sweep(tmp_path, [3, "two", 1.5]) == ["3", "two", "1.5"]


def test_list_written_as_a_string_is_a_list(tmp_path):
    assert sweep(tmp_path, "[4, 5, 6]") == ["4", "5", "6"]


def test_scalar_constants_are_shared_by_every_task(tmp_path):
    cmds = commands(tmp_path, {"cmd_template": "echo {n} {name} {eps} {i}",
                               "n": 4, "name": "run", "eps": 0.5, "i": [1, 2]})
    assert cmds == ["echo 4 run 0.5 1", "echo 4 run 0.5 2"]


def test_constants_only_make_one_task(tmp_path):
    path = write_json(tmp_path, {"e": {"cmd_template": "echo {n}", "n": 4}})
    stream = load_tasks(path)
    assert stream.total == 1
    assert [t.executable for t in stream] == ["echo 4"]


def test_format_spec_applies_to_the_value(tmp_path):
    cmds = commands(tmp_path, {"cmd_template": "echo {x:.2f} {i:03d}", "x": "linspace(0, 1, 3)",
                               "i": [7, 8, 9], "relation": "one-to-one"})
    assert cmds == ["echo 0.00 007", "echo 0.50 008", "echo 1.00 009"]


def test_shell_variables_are_left_for_the_shell(tmp_path):
    cmds = commands(tmp_path, {"cmd_template": "echo ${HOME}/out-{i} $USER", "i": [1]})
    assert cmds == ["echo ${HOME}/out-1 $USER"]


def test_a_doubled_brace_is_a_literal_brace_as_in_str_format(tmp_path):
    cmds = commands(tmp_path, {"cmd_template": "awk 'BEGIN {{print {a}}}'", "a": [1, 2]})
    assert cmds == ["awk 'BEGIN {print 1}'", "awk 'BEGIN {print 2}'"]
    assert subprocess.run(cmds[0], shell=True, capture_output=True, text=True).stdout == "1\n"
    assert commands(tmp_path, {"cmd_template": "echo {{a}} {{{a}}} {a}}} {} {", "a": [7]}) == \
        ["echo {a} {7} 7} {} {"]


# -- relations -----------------------------------------------------------------------------


def test_one_to_one_pairs_values_element_wise(tmp_path):
    cmds = commands(tmp_path, {"cmd_template": "echo {a} {b}", "a": [1, 2, 3],
                               "b": ["x", "y", "z"], "relation": "one-to-one"})
    assert cmds == ["echo 1 x", "echo 2 y", "echo 3 z"]


def test_many_to_many_is_the_cartesian_product_with_last_parameter_fastest(tmp_path):
    cmds = commands(tmp_path, {"cmd_template": "echo {a} {b}", "a": [1, 2],
                               "b": ["x", "y", "z"], "relation": "many-to-many"})
    assert cmds == ["echo 1 x", "echo 1 y", "echo 1 z", "echo 2 x", "echo 2 y", "echo 2 z"]


def test_many_to_many_order_follows_key_order_not_template_order(tmp_path):
    cmds = commands(tmp_path, {"cmd_template": "echo {b} {a}", "a": [1, 2], "b": ["x", "y"],
                               "relation": "many-to-many"})
    assert cmds == ["echo x 1", "echo y 1", "echo x 2", "echo y 2"]


def test_many_to_many_of_three_parameters_counts_the_product(tmp_path):
    path = write_json(tmp_path, {"e": {"cmd_template": "echo {a} {b} {c}", "a": "range(2)",
                                       "b": "linspace(0, 1, 3)", "c": ["p", "q", "r", "s"],
                                       "relation": "many-to-many"}})
    stream = load_tasks(path)
    assert stream.total == 24
    cmds = [t.executable for t in stream]
    assert cmds[:5] == ["echo 0 0.0 p", "echo 0 0.0 q", "echo 0 0.0 r", "echo 0 0.0 s",
                        "echo 0 0.5 p"]
    assert cmds[-1] == "echo 1 1.0 s"


def test_single_list_needs_no_relation(tmp_path):
    assert sweep(tmp_path, [1, 2]) == ["1", "2"]


# -- task ids ------------------------------------------------------------------------------


def test_task_ids_are_ensemble_name_and_index(tmp_path):
    path = write_json(tmp_path, {"alpha": {"cmd_template": "echo {a}", "a": "range(3)"},
                                 "beta": {"cmd_template": "echo {a}", "a": [9, 8]}})
    tasks = list(load_tasks(path))
    assert [t.task_id for t in tasks] == ["alpha-0", "alpha-1", "alpha-2", "beta-0", "beta-1"]
    assert [t.ensemble for t in tasks] == ["alpha"] * 3 + ["beta"] * 2


def test_task_ids_and_commands_are_identical_across_two_loads(tmp_path):
    path = write_json(tmp_path, {"e": {"cmd_template": "echo {a} {b}", "a": "linspace(0, 1, 4)",
                                       "b": "range(5)", "relation": "many-to-many"}})
    first = [(t.task_id, t.executable) for t in load_tasks(path)]
    second = [(t.task_id, t.executable) for t in load_tasks(path)]
    assert first == second
    assert len({task_id for task_id, _ in first}) == 20


def test_iterating_a_stream_twice_gives_the_same_tasks(tmp_path):
    stream = load_tasks(write_json(tmp_path, {"e": {"cmd_template": "echo {a}", "a": [1, 2]}}))
    assert [t.task_id for t in stream] == [t.task_id for t in stream] == ["e-0", "e-1"]


# -- options -------------------------------------------------------------------------------


def test_options_reach_the_tasks(tmp_path):
    for a in (1, 2):
        (tmp_path / "runs" / f"a{a}").mkdir(parents=True)
    path = write_json(tmp_path, {"sim": {
        "cmd_template": "echo {a}",
        "a": [1, 2],
        "nnodes": 2,
        "ppn": 4,
        "env": {"OMP_NUM_THREADS": 2, "CASE": "case-{a}", "FIXED": "yes"},
        "run_dir": str(tmp_path / "runs" / "a{a}"),
        "timeout": 30,
        "cpu_affinity": "0,1",
        "gpu_affinity": "0,1",
        "ngpus_per_process": 1,
        "stdout_file": "out-{a}.txt",
        "stderr_file": "err-{a}.txt",
    }})
    first, second = list(load_tasks(path))
    assert isinstance(first, Task)
    assert (first.nnodes, first.ppn) == (2, 4)
    assert first.env == {"OMP_NUM_THREADS": "2", "CASE": "case-1", "FIXED": "yes"}
    assert second.env["CASE"] == "case-2"
    assert first.run_dir == str(tmp_path / "runs" / "a1")
    assert second.run_dir == str(tmp_path / "runs" / "a2")
    assert first.timeout == 30.0
    assert first.cpu_affinity == [0, 1]
    assert first.gpu_affinity == ["0", "1"]
    assert first.ngpus_per_process == 1
    assert (first.stdout_file, first.stderr_file) == ("out-1.txt", "err-1.txt")
    assert (second.stdout_file, second.stderr_file) == ("out-2.txt", "err-2.txt")


def test_defaults_when_no_options_are_given(tmp_path):
    (task,) = load_tasks(write_json(tmp_path, {"e": {"cmd_template": "echo hi"}}))
    assert (task.nnodes, task.ppn, task.ngpus_per_process) == (1, 1, 0)
    assert (task.env, task.cpu_affinity, task.gpu_affinity) == ({}, [], [])
    assert (task.run_dir, task.timeout, task.stdout_file, task.stderr_file) == (None,) * 4


def test_affinity_accepts_lists_and_cpu_ranges(tmp_path):
    (task,) = load_tasks(write_json(tmp_path, {"e": {"cmd_template": "echo hi",
                                                     "cpu_affinity": "0-2,5",
                                                     "gpu_affinity": [0, 1]}}))
    assert task.cpu_affinity == [0, 1, 2, 5]
    assert task.gpu_affinity == ["0", "1"]


def test_parameter_used_only_in_env_is_swept(tmp_path):
    path = write_json(tmp_path, {"e": {"cmd_template": "echo hi", "env": {"SEED": "{seed}"},
                                       "seed": "range(3)"}})
    assert [t.env["SEED"] for t in load_tasks(path)] == ["0", "1", "2"]


def test_yaml_options_reach_the_tasks(tmp_path):
    path = write_yaml(tmp_path, """\
        ensembles:
          e:
            cmd_template: echo {a}
            a: range(2)
            ppn: 2
            timeout: 1.5
            cpu_affinity: "0,1"
            env:
              RANK_FILE: rank-{a}
        """)
    tasks = list(load_tasks(path))
    assert [t.env["RANK_FILE"] for t in tasks] == ["rank-0", "rank-1"]
    assert tasks[0].ppn == 2
    assert tasks[0].timeout == 1.5
    assert tasks[0].cpu_affinity == [0, 1]


# -- laziness ------------------------------------------------------------------------------


def million_task_file(tmp_path: Path) -> Path:
    return write_json(tmp_path, {"big": {"cmd_template": "true {a} {b}", "a": "range(1000)",
                                         "b": "range(1000)", "relation": "many-to-many"}})


def test_million_task_ensemble_is_counted_without_generating_it(tmp_path):
    stream = load_tasks(million_task_file(tmp_path))
    assert stream.total == 1_000_000
    assert stream.ensembles == {"big": 1_000_000}


def test_any_task_of_a_million_is_computed_directly(tmp_path):
    path = million_task_file(tmp_path)
    definition = json.loads(path.read_text())["ensembles"]["big"]
    spec = EnsembleSpec("big", definition, str(path))
    assert len(spec) == 1_000_000
    assert (spec[999_999].task_id, spec[999_999].executable) == ("big-999999", "true 999 999")
    assert spec[123_456].executable == "true 123 456"


def test_trillion_task_ensemble_is_indexed_without_enumeration(tmp_path):
    path = write_json(tmp_path, {"huge": {"cmd_template": "true {a} {b}",
                                          "a": "range(1000000)", "b": "range(1000000)",
                                          "relation": "many-to-many"}})
    assert load_tasks(path).total == 10**12
    definition = json.loads(path.read_text())["ensembles"]["huge"]
    last = EnsembleSpec("huge", definition)[10**12 - 1]
    assert (last.task_id, last.executable) == (f"huge-{10**12 - 1}", "true 999999 999999")


def test_negative_index_counts_from_the_end(tmp_path):
    spec = EnsembleSpec("e", {"cmd_template": "echo {a}", "a": [1, 2, 3]})
    assert spec[-1].task_id == "e-2"


ITERATE_ALL = """
import resource, sys
from ensemble_launcher.ensemble import load_tasks
stream = load_tasks(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = 0
last = None
for task in stream:
    count += 1
    last = task
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, count, last.task_id, last.executable)
"""


def test_iterating_a_million_tasks_keeps_memory_flat(tmp_path):
    path = million_task_file(tmp_path)
    proc = subprocess.run([sys.executable, "-c", ITERATE_ALL, str(path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before_kb, after_kb, count, last_id, last_cmd = proc.stdout.split(maxsplit=4)
    assert int(count) == 1_000_000
    assert (last_id, last_cmd.strip()) == ("big-999999", "true 999 999")
    assert int(after_kb) - int(before_kb) < 100 * 1024


def test_option_values_can_be_used_in_templates(tmp_path):
    path = write_json(tmp_path, {"mpi": {
        "cmd_template": "echo -n {ppn} -nnodes {nnodes} {a}", "ppn": 2, "a": [1, 2]}})
    assert [t.executable for t in load_tasks(path)] == [
        "echo -n 2 -nnodes 1 1", "echo -n 2 -nnodes 1 2"]
