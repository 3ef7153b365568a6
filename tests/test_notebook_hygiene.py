"""Notebooks are committed clean and follow the chapter template (CONTRIBUTING.md, "What a new chapter touches").

Execution itself is tested by `pytest --nbval-lax notebooks` (see `make test`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))


def _load(path):
    return json.loads(path.read_text())


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert "00_start_here.ipynb" in names and "01_mnist_soft_labels.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.name)
def test_committed_without_outputs_and_with_stable_ids(path):
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    ids = [c.get("id") for c in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), "every cell needs a unique, stable id"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, \
                f"{path.name}: clear outputs before committing (jupyter nbconvert --clear-output --inplace)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_template(path):
    nb = _load(path)
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "Learning goals" in markdown and "Key takeaways" in markdown
    assert "widgets." in text, "each chapter has at least one interactive widget"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            lines = [l for l in "".join(cell["source"]).splitlines() if l.strip() and not l.strip().startswith("#")]
            assert len(lines) <= 20, f"{path.name}: a cell of {len(lines)} lines belongs in kdlab_lib"


def _words(markdown: str) -> int:
    """Words a reader reads: prose and formulas' words, without markup, URLs or LaTeX commands."""
    import re
    text = re.sub(r"\$\$.*?\$\$|`[^`]*`|https?://\S+|\\[a-zA-Z]+", " ", markdown, flags=re.S)
    return len(re.findall(r"[A-Za-z0-9][\w'’.-]*", text))


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.name)
def test_one_idea_per_markdown_cell(path):
    """No wall of prose: every markdown cell reads in under a minute (150 words at most)."""
    for cell in _load(path)["cells"]:
        if cell["cell_type"] == "markdown":
            n = _words("".join(cell["source"]))
            assert n <= 150, f"{path.name}, cell {cell['id']}: {n} words; split it or cut it (150 at most)"


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.name)
def test_no_memory_housekeeping_in_cells(path):
    """Freeing memory is the library's job (it knows when a phase ends), not the reader's."""
    for cell in _load(path)["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            housekeeping = "release_memory" in source or "trim_heap" in source or source.lstrip().startswith("del ")
            assert not housekeeping, f"{path.name}, cell {cell['id']}: memory housekeeping belongs inside kdlab_lib"


def test_word_counter_counts_prose_not_markup():
    assert _words("Two words.") == 2
    assert _words("**Bold** and `code here` and $$x^2 + \\alpha$$ and https://example.org/a/b") == 4


def test_every_chapter_with_exercises_has_solutions():
    for path in NOTEBOOKS:
        text = "".join("".join(c["source"]) for c in _load(path)["cells"])
        if "exercises.check_" in text:
            stem = path.stem
            assert (ROOT / "notebooks" / "solutions" / f"{stem}_solutions.ipynb").exists(), stem


def _undisplayed(source: str) -> list[str]:
    """Calls that build a figure (``plots.*``) or a ``Table`` as a bare statement that is not the cell's
    last one: a notebook shows only the last expression, so such a figure or table is silently lost."""
    import ast
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    last = tree.body[-1] if tree.body else None
    lost = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Expr) or node is last or not isinstance(node.value, ast.Call):
            continue
        f = node.value.func
        name = (f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                else f.id if isinstance(f, ast.Name) else "")
        if name.startswith("plots.") or name in ("Table", "tables.Table", "tables.describe"):
            lost.append(f"line {node.lineno}: {name}(...)")
    return lost


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.name)
def test_every_figure_and_table_a_cell_builds_is_shown(path):
    for cell in _load(path)["cells"]:
        if cell["cell_type"] == "code":
            lost = _undisplayed("".join(cell["source"]))
            assert not lost, f"{path.name}, cell {cell['id']}: built but never shown (wrap it in display()): {lost}"


def test_the_undisplayed_check_catches_a_lost_figure():
    assert _undisplayed("plots.lines(x, {}, xlabel='a', ylabel='b')\nprint('done')")
    assert _undisplayed("if worst:\n    Table(['a'], [[1]])\nprint(1)")
    assert not _undisplayed("display(plots.lines(x, {}, xlabel='a', ylabel='b'))\nprint('done')")
    assert not _undisplayed("fig = plots.lines(x, {}, xlabel='a', ylabel='b')\nfig")
