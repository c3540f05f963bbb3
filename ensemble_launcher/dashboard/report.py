"""``el report --html``: the report as one HTML file that opens offline, to share or to
attach to a paper's supplement.

The file is the dashboard's page frozen at the time of writing: its script and style
inlined, the snapshot it would have fetched embedded as JSON (so its tables and counts are
the dashboard's, by construction), and ``el report``'s PNG plots and summary embedded as
base64. Nothing in it refers to another file or to the network.

It lives here, not in :mod:`ensemble_launcher.monitor` beside the PNG plots, because it is
built of the dashboard's page and snapshot, and the dashboard sits above the monitor.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ensemble_launcher.dashboard.data import RunView
from ensemble_launcher.dashboard.server import asset

REPORT_NAME = "report.html"


def write_html_report(run_dir: str | os.PathLike, plots: Sequence[Path],
                      summary: Sequence[str], out_dir: Path | None = None) -> Path:
    """Write ``report.html`` into ``out_dir`` (default RUN_DIR/report) with the PNG
    ``plots`` and the ``summary`` lines that :func:`~ensemble_launcher.monitor.report.
    write_report` returned; its path."""
    run_dir = Path(run_dir)
    snapshot = RunView(run_dir).snapshot()
    page = asset("index.html").decode()
    page = _replace_once(page, '<link rel="stylesheet" href="style.css">',
                         f"<style>\n{asset('style.css').decode()}</style>")
    page = _replace_once(page, '<script src="app.js" defer></script>\n', "")
    page = _replace_once(page, '<section id="plots" hidden>\n    <h2>Plots</h2>\n',
                         '<section id="plots">\n    <h2>Plots</h2>\n' + _plots(plots, summary))
    script = asset("app.js").decode()
    if "</script" in script.lower():
        raise AssertionError("app.js must not hold a closing script tag")
    page = _replace_once(page, "</body>", f'<script type="application/json" id="el-snapshot">'
                                          f"{_embedded_json(snapshot)}</script>\n"
                                          f"<script>\n{script}</script>\n</body>")
    path = (out_dir or run_dir / "report") / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _plots(plots: Sequence[Path], summary: Sequence[str]) -> str:
    parts = [f"<pre>{html.escape(chr(10).join(summary))}</pre>\n<div class=\"images\">\n"]
    for plot in plots:
        if plot.suffix.lower() != ".png":
            continue
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        parts.append(f'<img alt="{html.escape(plot.stem)}" src="data:image/png;base64,{data}">\n')
    return "".join(parts) + "</div>\n"


def _embedded_json(value: object) -> str:
    """JSON that no text inside can end the script element it is in (``</script>``)."""
    return json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise AssertionError(f"the dashboard page must hold {old!r} once")
    return text.replace(old, new)
