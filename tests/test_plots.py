"""The figure and table helpers a student reads: roles and their colours, ticks, table formatting,
budget summaries and verdict lists."""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from kdlab_lib import plots  # noqa: E402
from kdlab_lib.tables import Bullets, Table, describe  # noqa: E402

ROLE_COLOURS = {c for c, *_ in plots.STYLE.values()}
YELLOW = "#F0E442"


# ------------------------------------------------------------------ roles

@pytest.mark.parametrize("name, role", [
    ("distilled", "distilled"), ("distilled (forward KL)", "distilled"), ("distilled 800-800", "distilled"),
    ("scratch: seed 0", "scratch"), ("scratch 30-30", "scratch"), ("teacher", "teacher"),
    ("pretrained, then distilled", None), ("teacher -> 30-30 -> 10-10", None), ("direct", None),
    ("gain over scratch", None), ("distillation", None), ("scratchpad", None),
])
def test_a_role_is_the_whole_first_word_never_a_substring(name, role):
    assert plots.role_of(name) == role


def test_explicit_roles_win_over_the_name():
    roles = {"teacher -> 30-30 -> 10-10": "staged", "distilled": None}
    assert plots.role_of("teacher -> 30-30 -> 10-10", roles) == "staged"
    assert plots.role_of("distilled", roles) is None
    assert plots.style("teacher -> 30-30 -> 10-10", 0, roles)["color"] == plots.STYLE["staged"][0]


def test_series_without_a_role_never_take_a_role_colour_or_yellow():
    for i in range(12):
        kw = plots.style("some other series", i)
        assert kw["color"] not in ROLE_COLOURS and kw["color"] != YELLOW
        assert plots.hatch("some other series", i) not in {h for *_, h in plots.STYLE.values()}


def test_hatch_follows_the_role_not_the_position():
    assert plots.hatch("scratch", 0) == plots.hatch("scratch", 3) == plots.STYLE["scratch"][3]
    assert plots.hatch("distilled", 0) == plots.STYLE["distilled"][3]


def test_grouped_bars_colour_and_hatch_by_role_whatever_the_order():
    fig = plots.grouped_bars(range(3), {"distilled": [1, 2, 3], "scratch": [3, 2, 1]}, ylabel="errors",
                             xlabel="digit")
    ax = fig.axes[0]
    by_label = {}
    for patch in ax.patches:
        by_label.setdefault(patch.get_label(), patch)
    # matplotlib labels only the first bar of each container: read colours from the containers
    for container, name in zip(ax.containers, ["distilled", "scratch"]):
        bar = container.patches[0]
        assert matplotlib.colors.to_hex(bar.get_facecolor()).lower() == plots.STYLE[name][0].lower()
        assert bar.get_hatch() == plots.STYLE[name][3]
    assert ax.get_xlabel() == "digit"
    assert all(float(t).is_integer() for t in ax.get_yticks())   # whole error counts, no 2.5 ticks


def test_lines_draw_a_band_for_per_seed_values_and_leave_room_for_the_legend():
    fig = plots.lines([1, 2, 4], {"distilled": [[10, 12], [8, 8], [6, 9]]}, xlabel="T", ylabel="errors",
                      hlines={"scratch": 14})
    ax = fig.axes[0]
    line = ax.lines[0]
    assert list(line.get_ydata()) == [11, 8, 7.5]            # the mean of the seeds
    assert "mean ± std" in line.get_label()
    assert len(ax.collections) == 1                           # the one-std band
    assert ax.get_ylim()[1] > 14 + 0.1 * (14 - 6)             # head room above the top line
    log = plots.lines([1, 2], {"a": [1.0, 0.01]}, xlabel="x", ylabel="y", logy=True).axes[0]
    assert log.get_yscale() == "log"


def test_human_tick_labels():
    assert [plots.human(v) for v in [0.5, 20, 8000, 25000, 1.27681e6]] == ["0.5", "20", "8k", "25k", "1.28M"]


# ------------------------------------------------------------------ tables

def test_table_formats_what_students_read():
    t = Table(["model", "errors", "share", "T", "items"],
              [["a", 12345, 0.8440, 1.0, [631, 584]], ["b", torch.tensor(7), torch.tensor(0.5), 20.0, (1, 2)]],
              digits=[0, 0, 3, 0, 0], percent=("share",), title="one line title")
    text = str(t)
    assert text.splitlines()[0] == "one line title"
    assert "12,345" in text and "84.4%" in text and "50.0%" in text
    assert "631, 584" in text and "tensor" not in text and "[" not in text
    assert " 1 " in text.splitlines()[3] + " " and "1.0000" not in text
    html = t._repr_html_()
    assert 'text-align:left">a<' in html and 'text-align:right">12,345<' in html


def test_table_rejects_ragged_rows_and_wrong_digits():
    with pytest.raises(ValueError, match="2 cells but there are 3 headers"):
        Table(["a", "b", "c"], [[1, 2]])
    with pytest.raises(ValueError, match="digits lists 2 columns"):
        Table(["a", "b", "c"], [[1, 2, 3]], digits=[1, 2])


@dataclass
class _Budget:
    epochs: int = 3          # Hinton trained longer
    lr: float = 0.001
    hidden: tuple = (30, 30)  # a small student


def test_describe_shows_a_budget_with_its_source_comments():
    t = describe(_Budget(), title="budget")
    assert t.rows == [["epochs", 3, "Hinton trained longer"], ["lr", "0.001", ""],
                      ["hidden", (30, 30), "a small student"]]
    assert "30, 30" in str(t)
    with pytest.raises(ValueError, match="dataclass"):
        describe({"epochs": 3})


def test_bullets_are_a_list_with_the_first_number_bold():
    b = Bullets("saved 56.3 errors of 140\nno number here")
    assert str(b).splitlines() == ["saved 56.3 errors of 140", "no number here"]
    html = b._repr_html_()
    assert html.count("<li>") == 2 and "<b>56.3</b>" in html and "<b>140</b>" not in html


def test_figures_are_closed_so_a_cell_shows_them_once():
    import matplotlib.pyplot as plt
    before = len(plt.get_fignums())
    plots.lines(np.arange(3), {"a": [1, 2, 3]}, xlabel="x", ylabel="y")
    assert len(plt.get_fignums()) == before
