"""``kdlab bench notebooks``: every notebook executed in a fresh kernel, its wall seconds and peak memory.

With paths, only those notebooks run, and their rows replace the same notebooks' rows in ``--out`` (each row
keeps the commit and date of the run that measured it)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ...core import config, store


def _peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a process, in MB (Linux; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sections(nb, durations: dict[int, float]) -> list[dict]:
    """Per ``## `` heading of ``nb``: its title, the seconds its code cells ran (``durations``: cell index ->
    seconds) and the words of its markdown, for planning a lesson (cells before the first heading count as
    the introduction)."""
    rows = [{"section": "introduction", "seconds": 0.0, "words": 0}]
    for i, cell in enumerate(nb.cells):
        text = "".join(cell.source) if isinstance(cell.source, list) else cell.source
        if cell.cell_type == "markdown":
            heading = next((line[3:].strip() for line in text.splitlines() if line.startswith("## ")), None)
            if heading:
                rows.append({"section": heading, "seconds": 0.0, "words": 0})
            rows[-1]["words"] += sum(1 for w in text.split() if w.strip("#"))   # heading marks are not words
        elif cell.cell_type == "code":
            rows[-1]["seconds"] += durations.get(i, 0.0)
    return [{**r, "seconds": round(r["seconds"], 1)} for r in rows if r["seconds"] or r["words"]]


def run_notebook(path: Path, timeout: int = 1800) -> dict:
    """Execute a notebook top to bottom in a fresh kernel; wall seconds and the kernel's peak memory.

    The kernel inherits this process's environment, so ``KDLAB_QUICK`` decides the mode.
    Peak memory is sampled after every cell (VmHWM never decreases, so the last sample is the peak);
    ``sections`` gives each ``## `` section's seconds and words.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    samples: list[tuple[int, float]] = []
    started: dict[int, float] = {}
    durations: dict[int, float] = {}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})

    def sample(cell, cell_index, **_):
        durations[cell_index] = time.perf_counter() - started.get(cell_index, time.perf_counter())
        pid = client.km.provisioner.process.pid if client.km and client.km.provisioner else None
        mb = _peak_rss_mb(pid) if pid else None
        if mb is not None:
            samples.append((cell_index, mb))

    client.on_cell_start = lambda cell, cell_index, **_: started.__setitem__(cell_index, time.perf_counter())
    client.on_cell_executed = sample
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    peak = max((mb for _, mb in samples), default=None)
    jumps = sorted(((b[1] - a[1], b[0]) for a, b in zip(samples, samples[1:])), reverse=True)[:3]
    inside = path.is_absolute() and path.is_relative_to(config.REPO_ROOT)
    return {"notebook": str(path.relative_to(config.REPO_ROOT) if inside else path),
            "seconds": round(seconds, 1), "peak_mb": round(peak, 1) if peak else None,
            "biggest_cells": [{"cell": i, "added_mb": round(d, 1)} for d, i in jumps if d > 0],
            "slowest_cells": [{"cell": i, "seconds": round(t, 1)} for i, t in
                              sorted(durations.items(), key=lambda kv: -kv[1])[:3]],
            "sections": sections(nb, durations)}


def bench_notebooks(paths=None, out: Path | None = None, limit_mb: float = 1500.0,
                    limit_s: float = 600.0) -> list[dict]:
    """Run every notebook (and solution) and print seconds and peak memory; flag > ``limit_mb`` or
    > ``limit_s`` (the classroom budget: ten minutes and 1.5 GB on two cores)."""
    nb_dir = config.REPO_ROOT / "notebooks"
    some = bool(paths)   # a re-run of some notebooks keeps the file's other rows; a full run replaces them all
    paths = [Path(p) for p in paths] if paths else sorted(nb_dir.glob("*.ipynb")) + sorted(
        (nb_dir / "solutions").glob("*.ipynb"))
    run = store.BenchRun("notebooks")
    rows = []
    mode = "quick" if config.QUICK else "classroom"
    print(f"executing {len(paths)} notebooks in {mode} mode")
    for p in paths:
        stamp = {"git_commit": store.git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        r = {**run_notebook(p), **stamp}   # each row's own provenance: a re-run of some notebooks keeps the rest
        r["over_memory"] = r["peak_mb"] is not None and r["peak_mb"] > limit_mb
        r["over_time"] = r["seconds"] > limit_s
        r["over_limit"] = r["over_memory"] or r["over_time"]
        rows.append(r)
        flag = "".join(["  OVER the memory limit" if r["over_memory"] else "",
                        "  OVER the time limit" if r["over_time"] else ""])
        print(f"{r['notebook']:60s} {r['seconds']:7.1f} s  {r['peak_mb'] or float('nan'):7.0f} MB{flag}",
              flush=True)
    if out:
        kept = merged(rows, out) if some else rows
        run.write({"mode": mode, "limit_mb": limit_mb, "limit_s": limit_s, "notebooks": kept}, out)
    return rows


def merged(rows: list[dict], out) -> list[dict]:
    """``rows`` in place of the same notebooks' rows of the results file ``out`` (if it exists, from the same
    mode), the others kept with the commit and date of the run that made them, in the file's order."""
    out = Path(out)
    if not out.exists():
        return rows
    old = json.loads(out.read_text())
    if old.get("quick") != config.QUICK:
        return rows
    new = {r["notebook"]: r for r in rows}
    kept = [{"git_commit": old["git_commit"], "date": old["date"], **r} for r in old.get("notebooks", [])]
    out_rows = [new.pop(r["notebook"], r) for r in kept]
    return out_rows + list(new.values())
