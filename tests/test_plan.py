"""``kdlab plan``: lesson minutes read from ``kdlab bench notebooks``' results, and the README shows them."""
import json

import pytest

from kdlab_lib import config
from kdlab_lib.tools import cli, plan

FAKE = {"notebooks": [
    {"notebook": "notebooks/00_start_here.ipynb",
     "sections": [{"section": "introduction", "seconds": 30.0, "words": 100},
                  {"section": "Your first distillation", "seconds": 90.0, "words": 300}]},
    {"notebook": "notebooks/01_mnist_soft_labels.ipynb",
     "sections": [{"section": "1. The teacher", "seconds": 6.0, "words": 40},
                  {"section": "2. Soft targets", "seconds": 54.0, "words": 360},
                  {"section": "5. The experiment", "seconds": 600.0, "words": 200}]}]}


def test_minutes_are_run_seconds_and_words_at_the_reading_rate():
    assert plan.step_minutes(FAKE, "00_start_here") == {"run": 2.0, "read": 400 / plan.READING_WPM}
    assert plan.step_minutes(FAKE, "01_mnist_soft_labels", ("1.", "2.")) == {"run": 1.0, "read": 2.0}


def test_a_missing_notebook_or_section_says_what_to_do():
    with pytest.raises(KeyError, match="kdlab bench notebooks"):
        plan.step_minutes(FAKE, "02_distilbert")
    with pytest.raises(ValueError, match="no section of 01_mnist_soft_labels starts with"):
        plan.step_minutes(FAKE, "01_mnist_soft_labels", ("9.",))


def test_a_plan_table_adds_its_steps():
    table = plan.plan_table(FAKE, "Short", [("00_start_here", plan.ALL, "look"),
                                            ("01_mnist_soft_labels", ("1.", "2."), "slide")])
    assert "| `01_mnist_soft_labels` §1-2 | slide | 1.0 | 2.0 |" in table
    assert table.splitlines()[-1] == "| total | | 3.0 | 4.0 |"
    gap = plan.plan_table(FAKE, "Gap", [("01_mnist_soft_labels", ("1.", "5."), "skip")])
    assert "| `01_mnist_soft_labels` §1, 5 | skip | 10.1 | 1.2 |" in gap


def test_the_readme_shows_the_plans_made_from_the_shipped_results(capsys, tmp_path):
    path = config.RESULTS_DIR / "notebooks.json"
    shipped = json.loads(path.read_text())
    assert shipped["quick"] is False, "the plans' minutes must come from a classroom run"
    made = plan.plans_markdown(shipped)
    readme = (config.REPO_ROOT / "README.md").read_text()
    assert made in readme, "the README's plans are stale: paste the output of `kdlab plan`"
    assert cli.main(["plan"]) == 0 and capsys.readouterr().out.strip() == made
