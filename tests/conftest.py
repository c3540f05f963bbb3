"""Shared test settings.

Under CI=true a skipped test is a failure: every test here is required, and a skip there
would hide a missing dependency or a broken fixture.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


# A fresh multi-node Slurm + MPICH cluster per test, on network namespaces (see
# tests/cluster). Needs root and the Debian packages that .ci/run installs.
from cluster import cluster_fixture  # noqa: E402

cluster = cluster_fixture()
