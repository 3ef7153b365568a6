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
