"""How long the batch job has left, asked of Slurm or PBS."""

from __future__ import annotations

import os
import re
import shutil
import subprocess


def parse_duration(text: str) -> float | None:
    """Slurm/PBS durations: ``[D-]HH:MM:SS``, ``MM:SS``, ``SS``; None for UNLIMITED."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NOT_SET", "INVALID"):
        return None
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        days = int(head)
    parts = [float(p) for p in text.split(":")]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return days * 86400 + seconds


def job_time_left() -> float | None:
    """Seconds left in this Slurm or PBS job, or None when unknown or unlimited."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and shutil.which("squeue"):
        out = _run(["squeue", "-h", "-j", job, "-o", "%L"])
        return parse_duration(out) if out else None
    job = os.environ.get("PBS_JOBID")
    if job and shutil.which("qstat"):
        out = _run(["qstat", "-f", job])
        limit = re.search(r"Resource_List\.walltime = (\S+)", out)
        used = re.search(r"resources_used\.walltime = (\S+)", out)
        if limit:
            total = parse_duration(limit.group(1))
            spent = parse_duration(used.group(1)) if used else 0.0
            return None if total is None else max(0.0, total - (spent or 0.0))
    return None


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
