"""`kdlab grade` on a fabricated class: one right, one slip, one that raises, one that loops forever, one that is
not JSON, one that is not a notebook. One grade run (module fixture) serves every assertion about it."""
from __future__ import annotations

import csv
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

import kdlab_lib
from kdlab_lib.core import config
from kdlab_lib.tools import grade
from kdlab_lib.tools.grade import Mark, Result

TIMEOUT = 20   # seconds of cells per notebook: room for importing torch in the kernel, short for the loop

SETUP = f"""import os
from pathlib import Path
import torch
import kdlab_lib
from kdlab_lib.lab import exercises
# the kernel imports the grader's kdlab_lib, in quick mode, from the lab's notebooks folder, logging verdicts
assert kdlab_lib.__file__ == {kdlab_lib.__file__!r}, kdlab_lib.__file__
assert os.environ["KDLAB_QUICK"] == "1" and os.environ["{grade.GRADE_LOG}"]
assert Path.cwd() == Path({str(config.REPO_ROOT / "notebooks")!r}), Path.cwd()"""
RIGHT_SOFTEN = "exercises.check_soften(lambda z, T: torch.softmax(z / T, -1))"
RIGHT_KD = """def my_kd_loss(s, t, T):
    p_t = torch.softmax(t / T, -1)
    return T * T * (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
exercises.check_kd_loss(my_kd_loss)"""
NO_T2 = """def kd_loss_without_T2(s, t, T):
    p_t = torch.softmax(t / T, -1)
    return (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
exercises.check_kd_loss(kd_loss_without_T2)"""

CLASS = {   # name -> cells; strings are files that are not notebooks
    "all_right.ipynb": [SETUP, RIGHT_SOFTEN, RIGHT_KD, NO_T2],   # a slip shown after the right answer, as in
                                                                 # the solution notebooks: the pass still wins
    "one_slip.ipynb": [SETUP, RIGHT_SOFTEN, NO_T2],
    "raises.ipynb": [SETUP, "1 / 0", RIGHT_SOFTEN],
    "loops.ipynb": [SETUP, RIGHT_SOFTEN, "while True:\n    pass", RIGHT_KD],
    "not_json.ipynb": "{ this is not JSON",
    "notes.txt": "my answers are in my head",
}


def _write(folder: Path, name: str, content) -> Path:
    path = folder / name
    if isinstance(content, str):
        path.write_text(content)
        return path
    nb = new_notebook(cells=[new_code_cell(c) for c in content])
    if name == "all_right.ipynb":   # an error left from the student's own session must not count
        nb.cells[1].outputs = [new_output("error", ename="NameError", evalue="stale", traceback=[])]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    paths = [_write(folder, name, content) for name, content in CLASS.items()]
    before = {p: p.read_bytes() for p in paths}
    results = grade.grade(paths, timeout=TIMEOUT)
    html_path = grade.write_html(results, folder / "report.html", TIMEOUT)
    csv_path = grade.write_csv(results, folder / "report.csv")
    return {"results": {Path(r.path).name: r for r in results}, "before": before, "html": html_path,
            "csv": csv_path, "text": grade.to_text(results, TIMEOUT), "summary": grade.summarise(results)}


@pytest.mark.slow   # one real grade run of the class: a kernel per submission
def test_one_row_per_submission_with_its_status(graded):
    status = {name: r.status for name, r in graded["results"].items()}
    assert status == {"all_right.ipynb": "ok", "one_slip.ipynb": "ok", "raises.ipynb": "cells raised",
                      "loops.ipynb": "timed out", "not_json.ipynb": "unreadable", "notes.txt": "not a notebook"}
    r = graded["results"]
    assert "cell 2: ZeroDivisionError" in r["raises.ipynb"].detail
    assert f"after {TIMEOUT} s, in cell 3" in r["loops.ipynb"].detail
    assert "not JSON" in r["not_json.ipynb"].detail


@pytest.mark.slow   # one real grade run of the class: a kernel per submission
def test_one_column_per_exercise_and_the_pass_wins(graded):
    r = graded["results"]
    assert grade.exercise_names(list(r.values())) == ["soften", "kd_loss"]
    assert r["all_right.ipynb"].marks == {"soften": Mark(True, None, 1), "kd_loss": Mark(True, None, 2)}
    slip = r["one_slip.ipynb"].marks["kd_loss"]
    assert not slip.ok and slip.calls == 1 and slip.slip == "missing-T2"   # named by check_kd_loss
    assert grade.mark_text(slip) == "✗ missing-T2"
    # a cell that raised does not hide the checker after it; a timeout keeps the verdicts reached before it
    assert r["raises.ipynb"].marks == {"soften": Mark(True, None, 1)}
    assert r["loops.ipynb"].marks == {"soften": Mark(True, None, 1)}
    assert r["not_json.ipynb"].marks == {} and r["notes.txt"].marks == {}


@pytest.mark.slow   # one real grade run of the class: a kernel per submission
def test_pass_rates_count_every_executed_notebook(graded):
    s = {x.exercise: x for x in graded["summary"]}
    assert (s["soften"].passed, s["soften"].ran, s["soften"].reached) == (4, 4, 4)
    assert (s["kd_loss"].passed, s["kd_loss"].ran, s["kd_loss"].reached) == (1, 4, 2)
    assert grade.rate_text(s["kd_loss"]) == "1/4 (25%)"
    text = graded["text"]
    assert "1/4 (25%)" in text and "4/4 (100%)" in text and "formative" in text


@pytest.mark.slow   # one real grade run of the class: a kernel per submission
def test_csv_has_the_rows_and_the_summary(graded):
    rows = list(csv.reader(graded["csv"].open(encoding="utf-8")))
    assert rows[0] == ["submission", "status", "detail", "soften", "kd_loss"]
    by_name = {Path(row[0]).name: row for row in rows[1:-2]}
    assert [by_name[n][3:] for n in CLASS] == [["pass", "pass"], ["pass", by_name["one_slip.ipynb"][4]],
                                              ["pass", ""], ["pass", ""], ["", ""], ["", ""]]
    assert by_name["one_slip.ipynb"][4] == "fail: missing-T2"
    assert by_name["loops.ipynb"][1] == "timed out"
    assert rows[-2] == ["pass rate", "", "", "4/4 (100%)", "1/4 (25%)"]
    assert rows[-1][0] == "most common slip"


@pytest.mark.slow   # one real grade run of the class: a kernel per submission
def test_html_is_self_contained_escaped_and_says_formative(graded):
    page = graded["html"].read_text(encoding="utf-8")
    assert "This grade is formative." in page and "edit or delete a checker call" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert page.count("<tr>") == 1 + 2 + 1 + len(CLASS)   # summary header + 2 exercises, table header + rows
    assert "{ this is not JSON" not in page and "not JSON" in page


@pytest.mark.slow   # one real grade run of the class: a kernel per submission
def test_submissions_are_never_modified(graded):
    for path, data in graded["before"].items():
        assert path.read_bytes() == data, path


# ---- the class view from fabricated verdicts (no kernel) --------------------------------------------

def test_marks_a_pass_wins_otherwise_the_latest_failure_and_its_slip():
    records = [{"exercise": "a", "ok": False, "slip": "x"}, {"exercise": "a", "ok": False, "slip": "y"},
               {"exercise": "b", "ok": True, "slip": None}, {"exercise": "b", "ok": False, "slip": "z"}]
    assert grade.marks_from(records) == {"a": Mark(False, "y", 2), "b": Mark(True, None, 2)}


def test_summary_names_the_most_common_slip_among_those_not_passed():
    m = lambda ok, slip=None: {"loop": Mark(ok, slip, 1)}
    results = [Result("a", "ok", marks=m(False, "missing T²")), Result("b", "ok", marks=m(False, "missing T²")),
               Result("c", "cells raised", marks=m(False, "reversed KL")), Result("d", "timed out", marks=m(True)),
               Result("e", "ok"), Result("f", "unreadable")]
    (s,) = grade.summarise(results)
    assert (s.passed, s.ran, s.reached, s.slip, s.slip_count) == (1, 5, 4, "missing T²", 2)
    assert grade.slip_text(s) == "missing T² (2)" and grade.rate_text(s) == "1/5 (20%)"


def test_html_escapes_what_a_notebook_can_name(tmp_path):
    evil = "<script>alert(1)</script>"
    results = [Result(evil + ".ipynb", "ok", evil, {evil: Mark(False, evil, 1)})]
    page = grade.to_html(results)
    assert evil not in page and html_escaped(evil) in page


def html_escaped(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_read_log_skips_lines_that_are_not_verdicts(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"exercise": "a", "ok": true, "slip": null}\nnot json\n[1]\n{"ok": true}\n')
    assert grade.read_log(log) == [{"exercise": "a", "ok": True, "slip": None}]
    assert grade.read_log(tmp_path / "missing.jsonl") == []


@pytest.mark.slow
def test_every_solution_notebook_passes_every_checker_it_calls():
    solutions = sorted((config.REPO_ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    assert len(solutions) >= 6
    for r in grade.grade(solutions, timeout=900):
        assert r.status == "ok", (r.path, r.detail)
        failed = {k: m for k, m in r.marks.items() if not m.ok}
        assert r.marks and not failed, (r.path, failed)
