"""``el report``: where the time of a run went, as PNG plots and a text summary.

    utilization.png   busy cores over time, one line per node (up to 12; then the sum)
    durations.png     histogram of task durations
    throughput.png    tasks finished per second over time, with the rule firings marked
                      (vertical lines, labelled; at most MARKED_FIRINGS, spread evenly)
    failures.png      failed tasks by reason
    nodes.png         CPU use (%) and memory used of each node over time, from the samples
                      its worker took every node_sample_interval (up to MAX_NODE_LINES
                      nodes labelled; more: one thin line each, unlabelled)

Utilization is the sum over tasks of duration x cores used, divided by the cores of all
nodes x the time from the first task's start to the last task's end. Plotting libraries
are imported here only, so the rest of the launcher starts fast.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble_launcher.store.queries import Firing, NodeSample, UsageSummary, read_journal

FIGSIZE, DPI = (8.0, 4.5), 100
PLOTS = ("utilization.png", "durations.png", "throughput.png", "failures.png", "nodes.png")
#: Plots of several panels, one above the other, and how many.
_PANELS = {"nodes.png": 2}
#: Nodes the nodes plot labels, at most; more are drawn alike, without a legend.
MAX_NODE_LINES = 12
_GIB = 2**30
#: More marks than this would hide the throughput line and each other.
MARKED_FIRINGS = 50
_LABEL_CHARS = 24


@dataclass
class RunData:
    starts: Any
    ends: Any
    cores: Any
    hosts: list[str]
    states: Counter
    reasons: Counter
    total_cores: int
    meta: dict
    firings: list[Firing] = field(default_factory=list)
    samples: list[NodeSample] = field(default_factory=list)
    usage: list[UsageSummary] = field(default_factory=list)

    @property
    def origin(self) -> float:
        """Time zero of the plots: the first task's start (else the run's, else the first
        firing's)."""
        if len(self.starts):
            return float(self.starts.min())
        return self.meta.get("started") or (self.firings[0].at if self.firings else 0.0)

    @property
    def marked_firings(self) -> list[Firing]:
        """The firings the throughput plot marks: all, or MARKED_FIRINGS spread evenly."""
        n = len(self.firings)
        if n <= MARKED_FIRINGS:
            return self.firings
        step = (n - 1) / (MARKED_FIRINGS - 1)
        return [self.firings[round(i * step)] for i in range(MARKED_FIRINGS)]

    @property
    def span(self) -> float:
        return float(self.ends.max() - self.starts.min()) if len(self.starts) else 0.0

    @property
    def utilization(self) -> float:
        busy = float(((self.ends - self.starts) * self.cores).sum())
        return busy / (self.total_cores * self.span) if self.span > 0 else 0.0


def load(run_dir: Path) -> RunData:
    import numpy as np

    with read_journal(run_dir) as journal:
        meta = journal.meta()
        rows = list(journal.ran())
        states = Counter(journal.state_counts())
        reasons = Counter({r or "unknown": n for r, n in journal.failure_reasons().items()})
        firings = journal.firings()
        samples = journal.node_samples()
        usage = journal.usage()
    ncpus = meta.get("system_config", {}).get("ncpus", 1)
    total_cores = ncpus * max(1, len(meta.get("nodes", [])))
    return RunData(
        starts=np.array([r.start_time for r in rows], dtype=float),
        ends=np.array([r.end_time for r in rows], dtype=float),
        cores=np.array([max(1, len(r.cpus.split(","))) if r.cpus else 1 for r in rows],
                       dtype=float),
        hosts=[r.host or "?" for r in rows], states=states, reasons=reasons,
        total_cores=total_cores, meta=meta, firings=firings, samples=samples,
        usage=usage)


def summary(data: RunData) -> list[str]:
    import numpy as np

    durations = data.ends - data.starts
    total = sum(data.states.values())
    lines = [f"tasks: {total} ({', '.join(f'{n} {s}' for s, n in data.states.most_common())})"]
    if len(durations):
        lines += [
            f"span: {data.span:.2f} s from the first task's start to the last task's end",
            f"utilization: {100 * data.utilization:.1f}% of {data.total_cores} cores",
            f"task duration: mean {durations.mean():.3f} s, median "
            f"{float(np.median(durations)):.3f} s, max {durations.max():.3f} s",
            f"throughput: {len(durations) / data.span if data.span else 0:.1f} tasks/s",
        ]
    if data.reasons:
        lines.append("failures: " + ", ".join(f"{n} {r}" for r, n in data.reasons.most_common()))
    return lines + _usage_summary(data) + _firing_summary(data) + _node_summary(data)


def _usage_summary(data: RunData) -> list[str]:
    """One line per ensemble: peak RSS (mean, max) and CPU efficiency of its tasks."""
    if not data.usage:
        return ["resource use: not measured (resource_usage was off, or the run is from "
                "before we measured it)"]
    lines = []
    for use in data.usage:
        rss = "peak RSS not measured" if use.max_max_rss is None else \
            f"peak RSS mean {_mib(use.mean_max_rss)}, max {_mib(use.max_max_rss)}"
        efficiency = "-" if use.cpu_efficiency is None else f"{100 * use.cpu_efficiency:.1f}%"
        tasks = f"{use.measured} task{'' if use.measured == 1 else 's'}"
        lines.append(f"resource use of {use.ensemble or 'tasks'} ({tasks}): "
                     f"{rss}; CPU {use.cpu_seconds:.2f} s, efficiency {efficiency} "
                     "(CPU time / wall time / cores)")
    return lines


def _mib(size: float | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f} MiB"


def _firing_summary(data: RunData) -> list[str]:
    if not data.firings:
        return []
    kinds = Counter(f"{f.rule} -> {f.action}" for f in data.firings)
    shown = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common(5))
    more = f", {len(kinds) - 5} more kinds" if len(kinds) > 5 else ""
    lines = [f"rule firings: {len(data.firings)} ({shown}{more})"]
    left_out = len(data.firings) - len(data.marked_firings)
    if left_out:
        lines.append(f"throughput.png marks {len(data.marked_firings)} firings, spread "
                     f"evenly; {left_out} left out")
    return lines


def _node_summary(data: RunData) -> list[str]:
    if not data.samples:
        return ["node samples: none (node_sample_interval was 0, or the run is from before "
                "we sampled nodes)"]
    nodes = {s.node for s in data.samples}
    cpu = [s.cpu_percent for s in data.samples]
    fullest = max(data.samples, key=lambda s: s.mem_used)
    return [f"node samples: {len(data.samples)} of {len(nodes)} node(s) (nodes.png): CPU "
            f"mean {sum(cpu) / len(cpu):.1f}%, max {max(cpu):.1f}%; memory used at most "
            f"{fullest.mem_used / _GIB:.2f} of {fullest.mem_total / _GIB:.2f} GiB "
            f"({fullest.node})"]


def _label(firing: Firing) -> str:
    """A firing in a few words: the rule's label and its action."""
    text = f"{firing.rule} -> {firing.action}"
    return text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS - 1] + "…"


def write_report(run_dir: Path, out_dir: Path | None = None) -> tuple[list[Path], list[str]]:
    """Write the plots; return their paths and the summary lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        # scienceplots calls a matplotlib function deprecated in 3.11; not ours to fix.
        warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
        import scienceplots  # noqa: F401 - registers the "science" styles

    data = load(run_dir)
    out_dir = out_dir or run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.style.context(["science", "no-latex", {"savefig.bbox": "standard"}]):
        draws: tuple[Callable[..., None], ...] = (_utilization, _durations, _throughput,
                                                  _failures, _nodes)
        for name, draw in zip(PLOTS, draws, strict=True):
            fig, axes = plt.subplots(_PANELS.get(name, 1), 1, figsize=FIGSIZE, dpi=DPI,
                                     sharex=True, squeeze=False)
            draw(*axes[:, 0], data)
            fig.tight_layout()
            path = out_dir / name
            fig.savefig(path, dpi=DPI)
            plt.close(fig)
            paths.append(path)
    return paths, summary(data)


def _utilization(ax: Any, data: RunData) -> None:
    import numpy as np

    origin = data.starts.min() if len(data.starts) else 0.0
    hosts = sorted(set(data.hosts))
    groups = {h: [i for i, x in enumerate(data.hosts) if x == h] for h in hosts} \
        if len(hosts) <= 12 else {"all nodes": list(range(len(data.hosts)))}
    for label, idx in groups.items():
        times = np.concatenate([data.starts[idx], data.ends[idx]]) - origin
        steps = np.concatenate([data.cores[idx], -data.cores[idx]])
        order = np.argsort(times, kind="stable")
        ax.step(times[order], np.cumsum(steps[order]), where="post", label=label)
    ax.set_xlabel("time since the first task started (s)")
    ax.set_ylabel("busy cores")
    ax.set_title(f"Busy cores per node; utilization {100 * data.utilization:.1f}% of "
                 f"{data.total_cores} cores")
    if groups:
        ax.legend(fontsize="small")


def _durations(ax: Any, data: RunData) -> None:
    durations = data.ends - data.starts
    ax.hist(durations, bins=min(50, max(1, len(durations))))
    ax.set_xlabel("task duration (s)")
    ax.set_ylabel("tasks")
    ax.set_title(f"Task durations ({len(durations)} tasks)")


def _throughput(ax: Any, data: RunData) -> None:
    import numpy as np

    title = "Throughput"
    if len(data.ends):
        width = max(data.span / 50, 1e-3)
        bins = np.arange(0.0, data.span + width, width)
        counts, edges = np.histogram(data.ends - data.origin, bins=bins)
        ax.plot(edges[:-1], counts / width)
    else:
        title += " (no task ran)"
    ax.set_xlabel("time since the first task started (s)")
    ax.set_ylabel("tasks finished per second")
    ax.set_title(title + _mark_firings(ax, data))


def _mark_firings(ax: Any, data: RunData) -> str:
    """Draw a labelled vertical line at each marked firing; the title's note on them."""
    marked = data.marked_firings
    for firing in marked:
        x = firing.at - data.origin
        ax.axvline(x, color="tab:red", linewidth=0.6, alpha=0.6)
        ax.text(x, 0.98, _label(firing), transform=ax.get_xaxis_transform(), rotation=90,
                fontsize=5, color="tab:red", ha="right", va="top")
    if not data.firings:
        return ""
    left_out = len(data.firings) - len(marked)
    return f"; {len(data.firings)} rule firings" + \
        (f", {len(marked)} marked ({left_out} left out)" if left_out else " marked")


def _failures(ax: Any, data: RunData) -> None:
    if data.reasons:
        labels, values = zip(*data.reasons.most_common(), strict=True)
        ax.bar(labels, values)
    ax.set_ylabel("tasks")
    ax.set_title(f"Failures by reason ({sum(data.reasons.values())} failed)")


def _nodes(cpu_ax: Any, memory_ax: Any, data: RunData) -> None:
    """CPU % above, memory used below: one line per node, in the same colour in both."""
    by_node: dict[str, list[NodeSample]] = {}
    for sample in data.samples:
        by_node.setdefault(sample.node, []).append(sample)
    labelled = len(by_node) <= MAX_NODE_LINES
    for node, samples in sorted(by_node.items()):
        times = [s.at - data.origin for s in samples]
        style: dict[str, Any] = {"label": node} if labelled else \
            {"color": "tab:blue", "linewidth": 0.5, "alpha": 0.5}
        if len(samples) <= 50:
            style.update(marker=".", markersize=3)
        line, = cpu_ax.plot(times, [s.cpu_percent for s in samples], **style)
        style["color"] = line.get_color()
        memory_ax.plot(times, [s.mem_used / _GIB for s in samples], **style)
    cpu_ax.set_ylim(0, 105)
    cpu_ax.set_ylabel("CPU (%)")
    memory_ax.set_ylim(bottom=0)
    memory_ax.set_ylabel("memory used (GiB)")
    memory_ax.set_xlabel("time since the first task started (s)")
    title = f"Node CPU and memory use ({len(by_node)} nodes, {len(data.samples)} samples)" \
        if data.samples else "Node CPU and memory use (no node samples)"
    cpu_ax.set_title(title)
    if by_node and labelled:
        cpu_ax.legend(fontsize="small")
