"""``el dashboard`` and ``el report --html`` in a real headless browser: Debian's chromium
driven by Playwright (never a browser Playwright downloads), against real runs of ``el
run`` in a subprocess. Without chromium or playwright these tests skip, which CI=true
counts as a failure (see conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
FAILED_STATES = ("failed", "timed_out", "lost")
#: 40 tasks of 0.3 s; those whose index ends in 3 fail, saying so on stderr.
SWEEP = {"ensembles": {"sweep": {
    "cmd_template": "sh -c 'sleep 0.3; case {i} in *3) echo boom-{i} >&2; exit 3;; esac'",
    "i": "range(40)"}}}
SWEEP_FAILED = {f"sweep-{i}" for i in (3, 13, 23, 33)}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="needs playwright (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def test_dashboard_follows_a_live_run_and_shows_it_after(tmp_path, browser):
    run_dir = tmp_path / "run"
    run = start_run(tmp_path, SWEEP, run_dir)
    try:
        poll(lambda: journal_started(run_dir), "the run's journal")
        with dashboard(run_dir) as url:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_function("() => document.body.dataset.state === 'running' && "
                                   f"{shown('sweep', 'succeeded')} > 0", timeout=60_000)
            before = journal_counts(run_dir)["sweep"]
            seen = int(page.evaluate("document.body.dataset.updates"))
            page.wait_for_function(f"() => Number(document.body.dataset.updates) >= {seen + 2}")
            live = progress_on(page, "sweep")
            after = journal_counts(run_dir)["sweep"]
            assert run.poll() is None, "the run ended before the live page was read"
            for field, states in (("succeeded", ("succeeded",)), ("failed", FAILED_STATES)):
                assert count(before, states) <= int(live[field]) <= count(after, states)
            assert live["finished"].endswith("/40")
            parts = int(live["finished"].split("/")[0]) + sum(
                int(live[f]) for f in ("running", "queued", "pending"))
            assert parts == 40

            assert run.wait(timeout=120) == 1
            files_then = tree_of(run_dir)
            page.wait_for_function("() => document.body.dataset.state === 'finished'",
                                   timeout=30_000)
            done = progress_on(page, "sweep")
            final = journal_counts(run_dir)["sweep"]
            assert (done["finished"], done["succeeded"], done["failed"]) == \
                ("40/40", str(final["succeeded"]), str(count(final, FAILED_STATES)))
            assert (final["succeeded"], done["running"], done["pending"]) == (36, "0", "0")
            assert failures_on(page) == {task: ("exit_code", f"boom-{task.split('-')[1]}")
                                         for task in SWEEP_FAILED}

            page.fill("#search", "sweep-23")
            page.wait_for_selector("#search-results tr[data-task='sweep-23']")
            assert page.locator("#search-results tbody tr").first.get_attribute(
                "data-task") == "sweep-23"

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert_token_is_required(url)
            page.reload()
            page.wait_for_function("() => document.body.dataset.updates >= 1")
            assert tree_of(run_dir) == files_then, "the dashboard changed the run directory"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_html_report_opens_offline_with_the_same_counts(tmp_path, browser):
    run_dir = tmp_path / "run"
    codes = {"ensembles": {"codes": {"cmd_template": "sh -c 'echo bad-{c} >&2; exit {c}'",
                                     "c": [0] * 9 + [2, 5, 7]}}}
    assert start_run(tmp_path, codes, run_dir).wait(timeout=120) == 1
    out = el("report", "--html", run_dir)
    assert out.returncode == 0, out.stderr
    report = run_dir / "report" / "report.html"
    assert f"wrote {report}" in out.stdout

    context = browser.new_context(offline=True)
    requests: list[str] = []
    context.route("**/*", lambda route: (requests.append(route.request.url),
                                         route.abort() if not route.request.url.startswith(
                                             ("file:", "data:")) else route.continue_()))
    page = context.new_page()
    page.goto(report.as_uri())
    page.wait_for_function("() => document.body.dataset.updates === '1'")
    shown_counts = progress_on(page, "codes")
    final = journal_counts(run_dir)["codes"]
    assert (shown_counts["finished"], shown_counts["succeeded"], shown_counts["failed"]) == \
        ("12/12", str(final["succeeded"]), str(count(final, FAILED_STATES))) == \
        ("12/12", "9", "3")
    assert failures_on(page) == {f"codes-{i}": ("exit_code", f"bad-{c}")
                                 for i, c in ((9, 2), (10, 5), (11, 7))}
    images = page.locator("#plots img")
    assert images.count() >= 4
    assert all(images.nth(i).evaluate("img => img.naturalWidth > 0")
               for i in range(images.count()))
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    context.close()


def fail_on_three(x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x * x


def test_dashboard_shows_a_live_cluster_from_its_checkpoint_directory(tmp_path, browser):
    from ensemble_launcher import EnsembleLauncher
    from ensemble_launcher.config import LauncherConfig, SystemConfig
    from ensemble_launcher.orchestrator import ClusterClient

    checkpoint = tmp_path / "ckpt"
    cluster = EnsembleLauncher(ensemble_file={}, system_config=SystemConfig(name="local"),
                               launcher_config=LauncherConfig(
                                   cluster=True, checkpoint_dir=str(checkpoint),
                                   report_interval=0.3))
    with cluster, ClusterClient(checkpoint_dir=str(checkpoint)) as client:
        futures = [client.submit(fail_on_three, i) for i in range(10)]
        assert [f.exception(timeout=60) is None for f in futures].count(False) == 1
        with dashboard(checkpoint) as url:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function(f"() => {shown('tasks', 'succeeded')} === 9")
            shown_counts = progress_on(page, "tasks")
            assert (shown_counts["finished"], shown_counts["failed"],
                    shown_counts["pending"]) == ("10/?", "1", "?")
            assert page.inner_text("#run-state") == "running"
            (task, (reason, text)), = failures_on(page).items()
            assert (task.endswith(".3"), reason, text) == \
                (True, "exception", "ValueError: three is not allowed")


def test_dashboard_refuses_a_wildcard_address_and_what_is_not_a_run(tmp_path):
    run_dir = tmp_path / "run"
    quick = {"ensembles": {"one": {"cmd_template": "true {i}", "i": [1]}}}
    assert start_run(tmp_path, quick, run_dir).wait(timeout=120) == 0
    for wildcard in ("0.0.0.0", "::", "*"):
        out = el("dashboard", run_dir, "--bind", wildcard)
        assert out.returncode == 2
        assert f"--bind {wildcard!r} listens on every interface" in out.stderr
    out = el("dashboard", tmp_path / "nothing")
    assert (out.returncode, out.stderr.strip()) == \
        (2, f"el: error: {tmp_path / 'nothing'}: no such run directory")


# -- helpers -------------------------------------------------------------------------------


def assert_token_is_required(url: str) -> None:
    """Without the token, or with a wrong one, every request is refused (403)."""
    base, token = url.split("/?token=")
    for path in ("/", "/api/run", "/app.js", "/api/search?q=sweep", "/?token=x" + token,
                 f"/api/run?token={token[:-1]}"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=10)
        refused.value.close()
        assert refused.value.code == 403, path
    with urllib.request.urlopen(f"{base}/api/run?token={token}", timeout=10) as answer:
        assert json.load(answer)["run"]["state"] == "finished"


def shown(ensemble: str, field: str) -> str:
    """A JS expression: the number the page shows in ``field`` of ``ensemble``'s row."""
    return (f"Number((document.querySelector('#ensembles tr[data-ensemble=\"{ensemble}\"] "
            f"td[data-field=\"{field}\"]') || {{}}).textContent || 0)")


def progress_on(page: Any, ensemble: str) -> dict[str, str]:
    return page.evaluate(
        """name => Object.fromEntries([...document.querySelectorAll(
             `#ensembles tr[data-ensemble="${name}"] td[data-field]`)].map(
             td => [td.dataset.field, td.textContent]))""", ensemble)


def failures_on(page: Any) -> dict[str, tuple[str, str]]:
    """task id -> (reason, last line of its exception / stderr cell) in the failures table."""
    rows = page.evaluate("""() => [...document.querySelectorAll('#failures tr[data-task]')]
        .map(tr => [tr.dataset.task, tr.querySelector('[data-field=reason]').textContent,
                    tr.querySelector('[data-field=stderr]').textContent])""")
    return {task: (reason, text.strip().splitlines()[-1]) for task, reason, text in rows}


def journal_counts(run_dir: Path) -> dict[str, Counter]:
    """Final results per ensemble and state, read from the journal with SQLite itself."""
    conn = sqlite3.connect(f"file:{run_dir / 'journal.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT ensemble, state, COUNT(*) FROM results "
                            "GROUP BY ensemble, state").fetchall()
    finally:
        conn.close()
    counts: dict[str, Counter] = {}
    for ensemble, state, n in rows:
        counts.setdefault(ensemble, Counter())[state] = n
    return counts


def count(counts: Counter, states: tuple[str, ...]) -> int:
    return sum(counts[s] for s in states)


def journal_started(run_dir: Path) -> bool:
    """True once the run's journal holds its metadata (el dashboard refuses it before)."""
    if not (run_dir / "journal.db").exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{run_dir / 'journal.db'}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT 1 FROM meta WHERE key = 'started'").fetchone() \
                is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def tree_of(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``directory``: its size and modification time. SQLite's WAL
    index (``-shm``) is left out: every reader of a WAL journal marks its reads there,
    in shared memory, which holds none of the run's data."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()
            and not p.name.endswith("-shm")}


def start_run(tmp_path: Path, ensemble: dict, run_dir: Path) -> subprocess.Popen:
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(ensemble))
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps({"report_interval": 0.3}))
    return subprocess.Popen([*el_command(), "run", str(path), "--out", str(run_dir),
                             "--launcher-config", str(config), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def dashboard(run_dir: Path) -> Iterator[str]:
    """``el dashboard RUN_DIR`` in a subprocess: the URL it prints, while it serves."""
    with subprocess.Popen([*el_command(), "dashboard", str(run_dir)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None and server.stderr is not None
            first = server.stdout.readline()
            found = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", first)
            assert found, (first, server.stderr.read() if server.poll() is not None else "")
            yield found.group(0)
        finally:
            server.terminate()
            assert server.wait(timeout=30) == 0


def el(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*el_command(), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def el_command() -> list[str]:
    exe = shutil.which("el", path=os.path.dirname(sys.executable)) or shutil.which("el")
    return [exe] if exe else [sys.executable, "-m", "ensemble_launcher.cli"]


def poll(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)
