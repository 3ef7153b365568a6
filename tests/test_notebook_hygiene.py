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


def test_every_chapter_with_exercises_has_solutions():
    for path in NOTEBOOKS:
        text = "".join("".join(c["source"]) for c in _load(path)["cells"])
        if "exercises.check_" in text:
            stem = path.stem
            assert (ROOT / "notebooks" / "solutions" / f"{stem}_solutions.ipynb").exists(), stem
