"""``kdlab bench notebooks``: per-section seconds and words, and a real run of a tiny notebook."""
import nbformat
import pytest

from kdlab_lib.tools.bench import notebooks


def _nb(cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    return nb


def test_sections_add_each_headings_code_seconds_and_markdown_words():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = _nb([md("# Title\nthree words here"), code("1"),
              md("## 1. First part\none two"), code("2"), code("3"),
              md("more words"), md("## 2. Second\nx"), code("4")])
    rows = notebooks.sections(nb, {1: 0.5, 3: 1.0, 4: 2.5, 7: 4.0})
    assert rows == [{"section": "introduction", "seconds": 0.5, "words": 4},
                    {"section": "1. First part", "seconds": 3.5, "words": 7},
                    {"section": "2. Second", "seconds": 4.0, "words": 3}]


@pytest.mark.slow
def test_run_notebook_times_a_real_kernel_and_names_its_sections(tmp_path):
    path = tmp_path / "tiny.ipynb"
    nbformat.write(_nb([nbformat.v4.new_markdown_cell("## 1. Sleep\na short nap"),
                        nbformat.v4.new_code_cell("import time; time.sleep(0.3)")]), path)
    row = notebooks.run_notebook(path, timeout=120)
    assert row["notebook"] == str(path) and row["peak_mb"] > 0
    (section,) = row["sections"]
    assert section["section"] == "1. Sleep" and section["words"] == 5 and 0.3 <= section["seconds"] < 60


def test_a_rerun_replaces_its_rows_and_keeps_the_others_with_their_commit(tmp_path, monkeypatch):
    import json

    from kdlab_lib import config
    out = tmp_path / "notebooks.json"
    old = {"git_commit": "aaa", "date": "then", "quick": config.QUICK,
           "notebooks": [{"notebook": "a.ipynb", "seconds": 1.0}, {"notebook": "b.ipynb", "seconds": 2.0}]}
    out.write_text(json.dumps(old))
    rows = [{"notebook": "b.ipynb", "seconds": 3.0, "git_commit": "bbb"}, {"notebook": "c.ipynb", "seconds": 4.0}]
    got = notebooks.merged(rows, out)
    assert got == [{"git_commit": "aaa", "date": "then", "notebook": "a.ipynb", "seconds": 1.0},
                   rows[0], rows[1]]
    out.write_text(json.dumps({**old, "quick": not config.QUICK}))   # never mix quick and classroom rows
    assert notebooks.merged(rows, out) == rows
    assert notebooks.merged(rows, tmp_path / "missing.json") == rows
