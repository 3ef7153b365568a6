"""``kdlab grade``: run a class's notebooks and report what each exercise's checker said.

Each submission is copied into a temporary folder (the original is never touched) and executed top to
bottom in a kernel of its own (nbclient) in quick mode, with ``KDLAB_GRADE_LOG`` naming a fresh file:
every checker the notebook calls appends one JSON line ``{"exercise", "ok", "slip"}`` to it
(``exercises.GRADE_LOG``). A cell that raises does not stop the run, so later checkers still count; a
notebook that runs past its timeout has its kernel killed and keeps the verdicts it reached. A file that
is not a notebook, cannot be parsed, or breaks the kernel is reported in its row; one bad file never stops
the run.

The report has one row per submission, one column per exercise, and for each exercise its pass rate and
its most common slip, so an instructor sees what to re-teach: as HTML, as CSV, and as a summary on stdout.

The anchor is nbgrader's autograde without its database, cell metadata or hidden tests: the checkers the
notebooks already call are the tests. That makes the grade formative, since a student can edit or delete a
checker call. Submissions run with the grader's permissions, as in nbgrader: grade untrusted files in a
container.
"""
from __future__ import annotations

import csv
import html
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..core import config
from ..lab.exercises import GRADE_LOG

DEFAULT_TIMEOUT = 600.0   # seconds of cell execution per notebook (the kernel's start is not counted)
RAN = ("ok", "cells raised", "timed out", "kernel died")   # statuses of notebooks that were executed
RULE = ("A pass wins: an exercise counts as passed if any call of its checker passed (the solution notebooks "
        "show a slip after the right answer); otherwise the latest verdict, and its slip, is shown.")
FORMATIVE = ("Verdicts come from the checker calls inside each notebook, and a student "
             "can edit or delete a checker call: a pass means the checker accepted what it was given, "
             "not proof of the work. Read the notebooks before you give marks that count.")


@dataclass(frozen=True)
class Mark:
    """What one submission got for one exercise: passed or not, the slip named, how often it was checked."""
    ok: bool
    slip: str | None
    calls: int


@dataclass
class Result:
    """One submission: its path as given, a status (``RAN`` or "not a notebook" / "unreadable" / "failed"),
    a detail line, and a ``Mark`` per exercise the notebook's checkers reported."""
    path: str
    status: str
    detail: str = ""
    marks: dict[str, Mark] = field(default_factory=dict)
    seconds: float | None = None


@dataclass(frozen=True)
class ExerciseSummary:
    """One exercise across the class: passed of ``ran`` executed notebooks, and the most common slip."""
    exercise: str
    passed: int
    ran: int
    reached: int
    slip: str | None
    slip_count: int

    @property
    def rate(self) -> float | None:
        return self.passed / self.ran if self.ran else None


# ---- reading and running one submission -------------------------------------------------------------

def read_notebook(path: Path):
    """``(notebook, None)`` or ``(None, (status, detail))`` when the file is not one that can be run."""
    import nbformat
    if not path.is_file():
        return None, ("not a notebook", "no such file" if not path.exists() else "not a file")
    if path.suffix != ".ipynb":
        return None, ("not a notebook", f"a {path.suffix or 'suffix-less'} file, not .ipynb")
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except UnicodeDecodeError:
        return None, ("unreadable", "not UTF-8 text")
    except json.JSONDecodeError as err:
        return None, ("unreadable", f"not JSON ({err})")
    try:
        return nbformat.reads(text, as_version=4), None
    except Exception as err:  # nbformat's own errors: a JSON file that is not a notebook, an unknown version
        return None, ("unreadable", f"JSON but not a notebook ({type(err).__name__}: {str(err)[:200]})")


def kernel_env(log: Path) -> dict:
    """The grader's environment, plus quick mode, the grade log, and this kdlab_lib first on the path."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])   # the folder that holds kdlab_lib
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    env["KDLAB_QUICK"] = "1"
    env[GRADE_LOG] = str(log)
    return env


def lab_cwd(copy: Path) -> Path:
    """Where the kernel starts: the lab's ``notebooks/`` folder, so a submission's relative paths work as
    they did for the student; the copy's own folder when the lab is installed without its notebooks."""
    notebooks = config.REPO_ROOT / "notebooks"
    return notebooks if notebooks.is_dir() else copy.parent


def errors_in(nb) -> list[str]:
    """``"cell N: Name: message"`` for each cell whose outputs hold an error (N counts all cells from 1)."""
    found = []
    for i, cell in enumerate(nb.cells, 1):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {str(out.get('evalue'))[:120]}")
    return found


def execute(nb, cwd: Path, env: dict, timeout: float) -> tuple[str, str]:
    """Run ``nb`` in place in a fresh python3 kernel; ``(status, detail)``. Errors in cells are kept in the
    outputs and execution goes on; past ``timeout`` seconds of cells the kernel is killed."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    clock: dict[str, float] = {}
    current = {"cell": 0}

    def remaining(cell) -> float:   # one deadline for the whole notebook, started at its first cell
        start = clock.setdefault("start", time.monotonic())
        return max(timeout - (time.monotonic() - start), 0.01)

    for cell in nb.cells:   # the student's own outputs (errors included) must not count as this run's
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    quiet = logging.getLogger("kdlab.grade.nbclient")
    quiet.setLevel(logging.CRITICAL)
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout_func=remaining,
                            shutdown_kernel="immediate", resources={"metadata": {"path": str(cwd)}}, log=quiet)
    client.on_cell_start = lambda cell, cell_index, **_: current.__setitem__("cell", cell_index + 1)
    try:   # the kernel's own stderr (ipykernel's start-up warnings) would bury the report: drop it
        client.execute(env=env, stderr=subprocess.DEVNULL)
    except CellTimeoutError:
        return "timed out", f"stopped after {timeout:g} s, in cell {current['cell']}; its kernel was killed"
    except DeadKernelError as err:
        return "kernel died", f"in cell {current['cell']}: {err}"
    errors = errors_in(nb)
    if errors:
        return "cells raised", f"{len(errors)} cell(s) raised, later cells still ran: " + "; ".join(errors)
    return "ok", ""


def read_log(path: Path) -> list[dict]:
    """The checker verdicts a run appended, in order (a line that is not a verdict is skipped)."""
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and r.get("exercise"):
                records.append(r)
    return records


def marks_from(records: list[dict]) -> dict[str, Mark]:
    """One ``Mark`` per exercise, in the order first checked; the rule is ``RULE``."""
    marks: dict[str, Mark] = {}
    for r in records:
        name = str(r["exercise"])
        before = marks.get(name)
        calls = (before.calls if before else 0) + 1
        if before and before.ok:
            marks[name] = Mark(True, None, calls)
        else:
            ok = bool(r.get("ok"))
            marks[name] = Mark(ok, None if ok else r.get("slip"), calls)
    return marks


def grade_one(path, timeout: float = DEFAULT_TIMEOUT, cwd: Path | None = None) -> Result:
    """Grade one submission from a temporary copy; never raises for a bad file."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="kdlab-grade-") as tmp:
        copy = Path(tmp) / (path.name or "submission")
        if path.is_file():
            shutil.copyfile(path, copy)
        nb, problem = read_notebook(copy if path.is_file() else path)
        if problem:
            return Result(str(path), *problem)
        log = Path(tmp) / "grade-log.jsonl"
        start = time.perf_counter()
        try:
            status, detail = execute(nb, cwd or lab_cwd(copy), kernel_env(log), timeout)
        except Exception as err:  # the kernel would not start, or nbclient broke: report it, go on
            status, detail = "failed", f"{type(err).__name__}: {err}"
        return Result(str(path), status, detail, marks_from(read_log(log)),
                      round(time.perf_counter() - start, 1))


def grade(paths, timeout: float = DEFAULT_TIMEOUT, cwd: Path | None = None, progress=None) -> list[Result]:
    """Grade every submission in turn; ``progress(result)`` is called after each."""
    results = []
    for p in paths:
        results.append(grade_one(p, timeout, cwd))
        if progress:
            progress(results[-1])
    return results


# ---- the class view ---------------------------------------------------------------------------------

def exercise_names(results: list[Result]) -> list[str]:
    """Every exercise any submission reported, in order of first appearance."""
    names: dict[str, None] = {}
    for r in results:
        names.update(dict.fromkeys(r.marks))
    return list(names)


def summarise(results: list[Result]) -> list[ExerciseSummary]:
    """Per exercise: passed of the notebooks that ran (one that never reached the checker counts as not
    passed), how many reached it, and the slip named most often among those that did not pass."""
    ran = [r for r in results if r.status in RAN]
    rows = []
    for name in exercise_names(results):
        got = [r.marks[name] for r in ran if name in r.marks]
        slips = Counter(m.slip for m in got if not m.ok and m.slip)
        slip, count = slips.most_common(1)[0] if slips else (None, 0)
        rows.append(ExerciseSummary(name, sum(m.ok for m in got), len(ran), len(got), slip, count))
    return rows


def mark_text(mark: Mark | None, tick: str = "✅") -> str:
    """A report cell: ✅, ✗ with the slip's name when one was named, or — when the checker never ran."""
    if mark is None:
        return "—"
    return tick if mark.ok else ("✗ " + mark.slip if mark.slip else "✗")


def rate_text(s: ExerciseSummary) -> str:
    return f"{s.passed}/{s.ran} ({s.rate:.0%})" if s.ran else "—"


def slip_text(s: ExerciseSummary) -> str:
    """``name (how many)``, "none named" when those that did not pass named no slip, — when all passed."""
    if s.slip:
        return f"{s.slip} ({s.slip_count})"
    return "none named" if s.reached > s.passed else "—"


def to_text(results: list[Result], timeout: float = DEFAULT_TIMEOUT) -> str:
    """The stdout summary: a line per submission, then each exercise's pass rate and most common slip."""
    names = exercise_names(results)
    table = [["submission", "status", *names]]
    table += [[r.path, r.status, *(mark_text(r.marks.get(n)) for n in names)] for r in results]
    n = len(results)
    lines = [f"kdlab grade: {n} submission{'' if n == 1 else 's'} in quick mode, at most {timeout:g} s of cells "
             "each (formative: a student can edit a checker call)", ""]
    lines += _columns(table)
    summary = summarise(results)
    if summary:
        lines += ["", *_columns([["exercise", "passed", "most common slip"],
                                 *([s.exercise, rate_text(s), slip_text(s)] for s in summary)])]
    lines += [f"{r.path}: {r.detail}" for r in results if r.detail]
    return "\n".join(lines)


def _width(text: str) -> int:
    """Terminal columns: ✅ and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths)).rstrip() for row in rows]


def write_csv(results: list[Result], path) -> Path:
    """One row per submission (``pass`` / ``fail`` / ``fail: SLIP`` / empty when not reached), then a
    ``pass rate`` row and a ``most common slip`` row."""
    names = exercise_names(results)
    word = lambda m: "" if m is None else "pass" if m.ok else ("fail: " + m.slip if m.slip else "fail")
    summary = summarise(results)
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["submission", "status", "detail", *names])
        for r in results:
            w.writerow([r.path, r.status, r.detail, *(word(r.marks.get(n)) for n in names)])
        w.writerow(["pass rate", "", "", *(rate_text(s) for s in summary)])
        w.writerow(["most common slip", "", "", *(slip_text(s) for s in summary)])
    return path


TICK = "✓"   # the HTML's pass mark: ✅ needs an emoji font, which a browser may lack
CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.35em .7em;text-align:left}
th{background:#f3f3f3}td.pass{color:#009E73;font-weight:600}td.fail{color:#D55E00;font-weight:600}
td.none{color:#888}.note{background:#fff7e0;border-left:4px solid #E69F00;padding:.6em 1em}
.detail{color:#555;font-size:.9em}"""


def to_html(results: list[Result], timeout: float = DEFAULT_TIMEOUT) -> str:
    """A self-contained page: the formative note, the class table, and the per-exercise summary."""
    e = html.escape
    names = exercise_names(results)
    cls = lambda m: "none" if m is None else "pass" if m.ok else "fail"
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{e(r.path)}</td><td>{e(r.status)}<div class='detail'>{e(r.detail)}</div></td>"
        + "".join(f"<td class='{cls(r.marks.get(n))}'>{e(mark_text(r.marks.get(n), TICK))}</td>" for n in names)
        + "</tr>" for r in results)
    summary = "".join(f"<tr><td>{e(s.exercise)}</td><td>{e(rate_text(s))}</td><td>{s.reached}</td>"
                      f"<td>{e(slip_text(s))}</td></tr>" for s in summarise(results))
    ran, when = sum(r.status in RAN for r in results), time.strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kdlab grade report</title><style>{CSS}</style></head>
<body><h1>kdlab grade report</h1>
<p class="note"><strong>This grade is formative.</strong> {e(FORMATIVE)}</p>
<p>{len(results)} submissions, {ran} executed in quick mode (at most {timeout:g} s of cells each, in a
temporary copy with a kernel of its own) on {when}. {TICK} passed, ✗ not yet (with the slip the checker
named, if any), — the checker was never reached. {e(RULE)}</p>
<h2>What to re-teach</h2>
<p>Passed counts every executed notebook, so one that never reached the checker counts as not passed.</p>
<table><tr><th>exercise</th><th>passed</th><th>reached</th><th>most common slip (how many)</th></tr>
{summary}</table>
<h2>Submissions</h2>
<table><tr><th>submission</th><th>status</th>{head}</tr>
{body}</table>
</body></html>
"""


def write_html(results: list[Result], path, timeout: float = DEFAULT_TIMEOUT) -> Path:
    path = Path(path)
    path.write_text(to_html(results, timeout), encoding="utf-8")
    return path
