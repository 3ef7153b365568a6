"""Static figures: results in, a matplotlib ``Figure`` out.

Colours are the Okabe-Ito colour-blind-safe palette. A series plays a **role** (``STYLE``) with a
fixed colour, line style, marker and hatch: the teacher black and solid, a student trained from
scratch orange and dashed, a distilled one blue, a staged one green, a difference or gain grey.
A series is given its role explicitly (``roles={"name": "distilled"}``) or by its name starting
with the role's word ("distilled (forward KL)"); any other series gets a colour no role uses
(sky blue, vermilion, purple), never the roles' colours and never the hard-to-see yellow.
Figures where the text argues about seed noise take the per-seed values and draw their spread.
"""
from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..core.datasets import to_pixels

OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]
STYLE = {  # role -> (colour, line style, marker, hatch)
    "teacher": ("#000000", "-", "o", ""),
    "scratch": ("#E69F00", "--", "s", "//"),
    "distilled": ("#0072B2", "-.", "^", ".."),
    "staged": ("#009E73", "-", "D", "xx"),
    "published": ("#999999", ":", "x", "\\\\"),
    "neutral": ("#666666", "-", "o", ""),          # a difference or a gain: no student's colour
}
OTHERS = ["#56B4E9", "#D55E00", "#CC79A7", "#56B4E9", "#D55E00", "#CC79A7"]   # no role's colour, no yellow
OTHER_STYLES = ["-", "--", "-.", ":", "-", "--"]
OTHER_MARKERS = ["o", "v", "P", "*", "h", "<"]
OTHER_HATCHES = ["++", "oo", "--", "||", "**", "OO"]   # none a role's hatch


def role_of(name: str, roles: dict | None = None) -> str | None:
    """The role a series plays: ``roles[name]`` if given (None: no role), else the role whose word
    the name is ("distilled", "distilled (forward KL)", "distilled 800-800" -> distilled; "pretrained, then
    distilled" and "teacher -> 30-30 -> 10-10" -> none)."""
    if roles and name in roles:
        return roles[name]
    word = re.match(r"([a-z]+)\s*(?:$|[(:,]|\d)", name.lower())   # the word alone, or before "(", ":", "," or a size
    return word.group(1) if word and word.group(1) in STYLE else None


def style(name: str, i: int = 0, roles: dict | None = None) -> dict:
    """Line kwargs (colour, line style, marker) for a series: its role's, or the i-th of the others'."""
    role = role_of(name, roles)
    if role is not None:
        c, ls, m, _h = STYLE[role]
        return {"color": c, "linestyle": ls, "marker": m}
    return {"color": OTHERS[i % len(OTHERS)], "linestyle": OTHER_STYLES[i % len(OTHER_STYLES)],
            "marker": OTHER_MARKERS[i % len(OTHER_MARKERS)]}


def hatch(name: str, i: int = 0, roles: dict | None = None) -> str:
    """A bar's hatch: its role's (so scratch is always ``//``), else the i-th of the others'."""
    role = role_of(name, roles)
    return STYLE[role][3] if role is not None else OTHER_HATCHES[i % len(OTHER_HATCHES)]


def human(v: float) -> str:
    """A tick label people read: 8k, 25k, 1.3M, 0.5, 20."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:g}"


def _retina() -> None:
    """Sharp figures on high-resolution screens, in a notebook kernel (never creating an IPython shell
    elsewhere: a script or a test stays a plain Python process)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is not None and hasattr(get_ipython(), "kernel"):
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("retina")


_retina()


def _fig(figsize=(6, 3.5), ncols=1):
    fig, axes = plt.subplots(1, ncols, figsize=figsize, layout="constrained")
    plt.close(fig)  # shown by display(fig) or the notebook's last expression, never twice
    return fig, axes


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def digit(image, ax=None, title: str = ""):
    """Show one ``(1, 28, 28)`` normalised MNIST digit."""
    fig = None
    if ax is None:
        fig, ax = _fig((2, 2))
    ax.imshow(_np(to_pixels(image)).squeeze(), cmap="gray_r")
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return fig or ax.figure


def digit_png(image, scale: int = 5) -> bytes:
    """One ``(1, 28, 28)`` normalised MNIST digit as PNG bytes (dark on white, each pixel ``scale`` wide)."""
    import io
    px = _np(to_pixels(image)).squeeze()                                  # (28, 28) in [0, 1]
    px = np.kron(px, np.ones((scale, scale)))                             # nearest-neighbour upscale
    buf = io.BytesIO()
    plt.imsave(buf, px, cmap="gray_r", vmin=0, vmax=1, format="png")
    return buf.getvalue()


def soft_targets(probs, *, temperature: float, log: bool = False, true_label: int | None = None,
                 ax=None, title: str | None = None):
    """Bars of a softened distribution over the classes, with the uniform 1/C line."""
    probs = _np(probs)
    fig = None
    if ax is None:
        fig, ax = _fig((5, 3))
    c = len(probs)
    colours = [STYLE["distilled"][0]] * c
    if true_label is not None:
        colours[true_label] = STYLE["scratch"][0]
    ax.bar(range(c), probs, color=colours, edgecolor="black", linewidth=0.5)
    ax.axhline(1 / c, color="black", linestyle=":", linewidth=1, label=f"uniform 1/{c}")
    ax.set_xticks(range(c))
    ax.set_xlabel("class")
    ax.set_ylabel(f"p(class) at T = {temperature:g}")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(max(float(probs.min()) / 2, 1e-12), 1.5)
    else:
        ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title if title is not None else f"teacher's soft targets, T = {temperature:g}", fontsize=10)
    return fig or ax.figure


def similarity_matrix(matrix, *, temperature: float, ax=None):
    """Heat map of the teacher's averaged soft targets per class, diagonal hidden."""
    m = _np(matrix).astype(float).copy()
    np.fill_diagonal(m, np.nan)
    fig = None
    if ax is None:
        fig, ax = _fig((4.6, 4))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(m))), ax.set_yticks(range(len(m)))
    ax.set_xlabel("looks like class"), ax.set_ylabel("true class")
    ax.set_title(f"dark knowledge: mean p_T(k | class c), T = {temperature:g}", fontsize=10)
    ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return fig or ax.figure


def _mean_spread(ys) -> tuple[np.ndarray, np.ndarray | None]:
    """A series as plotted: its values, or, when each point holds several seeds' values, their mean and
    standard deviation."""
    if len(ys) and isinstance(ys[0], (list, tuple, np.ndarray, torch.Tensor)) and np.ndim(_np(ys[0])) == 1:
        arr = [np.asarray(_np(v), dtype=float) for v in ys]
        return (np.array([a.mean() for a in arr]),
                np.array([a.std(ddof=1) if len(a) > 1 else 0.0 for a in arr]))
    return np.asarray(_np(ys), dtype=float), None


def lines(x, series: dict, *, xlabel: str, ylabel: str, title: str = "", logx: bool = False,
          logy: bool = False, hlines: dict | None = None, roles: dict | None = None, ax=None):
    """One line per named series over the same x; ``hlines`` adds labelled horizontal lines.

    A series may give several values per point (one per seed): the line is their mean and a band of
    one standard deviation shows the spread. ``roles`` names a series' role where its name does not."""
    fig = None
    if ax is None:
        fig, ax = _fig()
    xs = np.asarray(_np(x))
    for i, (name, ys) in enumerate(series.items()):
        mean, spread = _mean_spread(ys)
        kw = style(name, i, roles)
        ax.plot(xs, mean, label=name + (" (mean ± std over seeds)" if spread is not None else ""), **kw)
        if spread is not None:
            ax.fill_between(xs, mean - spread, mean + spread, color=kw["color"], alpha=0.15, linewidth=0)
    for i, (name, y) in enumerate((hlines or {}).items()):
        kw = style(name, i + len(series), roles)
        ax.axhline(y, color=kw["color"], linestyle=kw["linestyle"], linewidth=1, label=name)
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(xs), ax.set_xticklabels([human(v) for v in xs])
        ax.minorticks_off()
    elif np.issubdtype(xs.dtype, np.integer) or (xs.size and np.all(np.mod(xs, 1) == 0)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if logy:
        ax.set_yscale("log")
    else:  # head room, so the legend does not sit on a line drawn along the top
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.2 * (hi - lo))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: human(v)))
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig or ax.figure


def grouped_bars(categories, series: dict, *, ylabel: str, title: str = "", xlabel: str = "",
                 roles: dict | None = None, ax=None):
    """Bars per category, one colour and hatch per named series' role (e.g. errors per class)."""
    fig = None
    if ax is None:
        fig, ax = _fig((7, 3.5))
    n = len(series)
    width = 0.8 / max(n, 1)
    xs = np.arange(len(categories))
    for i, (name, ys) in enumerate(series.items()):
        ax.bar(xs + (i - (n - 1) / 2) * width, _np(ys), width, label=name, color=style(name, i, roles)["color"],
               hatch=hatch(name, i, roles), edgecolor="white" if role_of(name, roles) == "teacher" else "black",
               linewidth=0.5)
    labels = [str(c) for c in categories]
    ax.set_xticks(xs), ax.set_xticklabels(labels, rotation=20 if sum(map(len, labels)) > 60 else 0,
                                          ha="right" if sum(map(len, labels)) > 60 else "center")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True)) if all(
        float(v).is_integer() for ys in series.values() for v in _np(ys).ravel()) else None
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig or ax.figure


def playground(runs: list[dict], *, scratch_errors: int | None, teacher_errors: int | None, ax=None):
    """Test errors of each distilled run against T (marker colour = alpha), beside scratch and teacher."""
    fig = None
    if ax is None:
        fig, ax = _fig((6, 3.5))
    if runs:
        sc = ax.scatter([r["temperature"] for r in runs], [r["errors"] for r in runs],
                        c=[r["alpha"] for r in runs], cmap="cividis", vmin=0, vmax=1,
                        marker="^", s=60, edgecolor="black", label="distilled (colour = alpha)")
        ax.figure.colorbar(sc, ax=ax, label="alpha (weight of hard labels)")
    if scratch_errors is not None:
        ax.axhline(scratch_errors, color=STYLE["scratch"][0], linestyle="--", label="same student from scratch")
    if teacher_errors is not None:
        ax.axhline(teacher_errors, color="black", linestyle="-", label="teacher")
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 4, 8, 16]), ax.set_xticklabels(["1", "2", "4", "8", "16"])
    ax.set_xlabel("temperature T"), ax.set_ylabel("test errors (of 10,000)")
    ax.set_title("your distillation runs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig or ax.figure


def digits_grid(images, titles, ncols: int = 8):
    """A grid of digits with a caption under each (e.g. the student's mistakes)."""
    n = len(images)
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.5 * nrows), layout="constrained")
    plt.close(fig)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, img, t in zip(np.ravel(axes), images, titles):
        digit(img, ax=ax, title=t)
        ax.axis("on")
    return fig


def reliability_diagram(bins: dict, *, title: str = "", ax=None):
    """Reliability diagrams side by side: ``bins`` maps a model's name to ``metrics.reliability_bins``
    (or ``confidence_bins``). Bars: accuracy per confidence bin; the diagonal is perfect calibration;
    the gap between a bar's top and the diagonal is that bin's miscalibration. Each panel's title
    gives the model's ECE."""
    names = list(bins)
    fig = None
    if ax is None:
        fig, axes = _fig((2.9 * len(names), 3.0), ncols=len(names))
        axes = np.atleast_1d(axes)
    else:
        axes = np.atleast_1d(ax)
    for i, (a, name) in enumerate(zip(axes, names)):
        b = bins[name]
        edges = _np(b["edges"])
        width = edges[1] - edges[0]
        acc, conf = np.nan_to_num(_np(b["accuracy"])), np.nan_to_num(_np(b["confidence"]))
        colour = style(name, i)["color"]
        a.bar(edges[:-1], acc, width, align="edge", color=colour, edgecolor="black", linewidth=0.5,
              label="accuracy", alpha=0.8)
        a.bar(edges[:-1], conf - acc, width, bottom=acc, align="edge", fill=False, hatch="//",
              edgecolor="#D55E00", linewidth=0.5, label="gap to confidence")
        a.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1)
        a.set_xlim(0, 1), a.set_ylim(0, 1)
        a.set_xlabel("confidence (top probability)")
        if i == 0:
            a.set_ylabel("accuracy in the bin")
            a.legend(fontsize=7, loc="upper left")
        a.set_title(f"{name}: ECE {b['ece']:.3f}", fontsize=9)
    if title and fig is not None:
        fig.suptitle(title, fontsize=10)
    return fig or axes[0].figure


def gap_bars(categories, gaps, *, xlabel: str, title: str = "", highlight: int = 0, ax=None):
    """Horizontal bars of each category's student-teacher gap (positive: the student falls short),
    largest at the top; the ``highlight`` first ones (the worst) in vermilion."""
    fig = None
    if ax is None:
        fig, ax = _fig((6, 0.3 * len(categories) + 1.2))
    ys = np.arange(len(categories))[::-1]
    colours = ["#D55E00" if i < highlight else "#0072B2" for i in range(len(categories))]
    ax.barh(ys, _np(gaps), color=colours, edgecolor="black", linewidth=0.5)
    ax.set_yticks(ys), ax.set_yticklabels([str(c) for c in categories], fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig or ax.figure


def robustness_curves(sweeps: dict, *, title: str = ""):
    """One panel per perturbation (``ch06_evaluation.robustness`` results keyed by kind): each model's
    test errors as the perturbation grows."""
    units = {"noise": "pixel noise (std)", "shift": "shift (pixels)", "angle": "rotation (degrees)"}
    fig, axes = _fig((3.3 * len(sweeps), 3.0), ncols=len(sweeps))
    for ax, (kind, r) in zip(np.atleast_1d(axes), sweeps.items()):
        lines(r["levels"], r["errors"], xlabel=units.get(kind, kind), ylabel=f"test errors (of {r['n']:,})", ax=ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
