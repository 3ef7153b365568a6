"""Interactive panels (ipywidgets) built from ``metrics`` and ``plots``.

Every panel keeps what it computed in ``panel.result`` (a dict), so a test or
a curious reader can compare it with the library's own numbers; its key
numbers are also shown as text in ``panel.readout`` (an ``HTML`` widget whose
spans carry a ``kd-...`` class, for browser tests). Callbacks run inside the
panel's ``Output``, so an exception shows up in the notebook instead of
vanishing. Show a panel by making it the last expression of a cell.

Panels whose figure follows a control draw it as a plotly ``FigureWidget`` (``panel.fig``) and
change its traces in place (``draw``, under ``fig.batch_update()``): moving a slider sends a few
numbers, not a new picture. Cheap panels follow the slider while it is dragged
(``continuous_update=True``); ``Panel._changed`` redraws at most once per ``interval`` and always
draws the last value, so a fast drag never leaves a queue of stale redraws behind it. Panels whose
work is heavy (training, re-scoring thousands of digits) update on a button or on release.
"""
from __future__ import annotations

import asyncio
import math
import time

import ipywidgets as W
import plotly.graph_objects as go
import torch
from IPython import get_ipython
from IPython.display import clear_output, display
from plotly.subplots import make_subplots

from ..chapters import ch02_distilbert as ch02
from ..chapters import ch03_gpt2 as ch03
from ..chapters import ch04_self_distillation as ch04
from ..chapters import ch05_staged as ch05
from ..chapters import ch06_evaluation as ch06
from ..core import config, losses, metrics, models, text, train
from . import plots


def _span(cls: str, text) -> str:
    return f'<span class="kd-{cls}">{text}</span>'


def _check_temperature(t: float, lo: float, hi: float) -> None:
    """A starting T the slider can show (a slider would silently clamp it to its range)."""
    if not lo <= t <= hi:
        raise ValueError(f"temperature must be in [{lo:g}, {hi:g}] (the slider's range), got {t}")


def _running_loop():
    """The kernel's asyncio loop while a widget callback runs in one; None in a plain script or test."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


ROLE_DASH = {"-": "solid", "--": "dash", "-.": "dashdot", ":": "dot"}


def role_line(role: str) -> dict:
    """A plotly line in a role's colour and dash (``plots.STYLE``: teacher black, scratch orange, ...)."""
    colour, style, _marker, _hatch = plots.STYLE[role]
    return {"color": colour, "dash": ROLE_DASH[style]}


def live_figure(*, rows: int = 1, cols: int = 1, height: int = 300, width: int = 720, **subplots) -> go.FigureWidget:
    """An empty plotly ``FigureWidget`` in the lab's look: white, small margins, a readable font."""
    base = make_subplots(rows=rows, cols=cols, **subplots) if (rows, cols) != (1, 1) or subplots else go.Figure()
    fig = go.FigureWidget(base)
    fig.update_layout(template="simple_white", height=height, width=width, font=dict(size=12),
                      margin=dict(l=60, r=20, t=40, b=45), hoverlabel=dict(bgcolor="white"))
    fig._config = {"displayModeBar": False}   # no zoom toolbar: a third less to redraw on every slider step
    return fig


def _r(values, digits: int = 4) -> list:
    """Numbers rounded for people (and for the few bytes a slider move sends)."""
    return [round(float(v), digits) for v in values]


class Panel:
    """Base: controls + readout + figure + output; ``refresh`` recomputes ``result`` and redraws.

    A subclass fills in ``compute`` (the numbers), ``text`` (the readout) and either ``build`` and
    ``draw`` (a plotly figure made once and changed in place) or ``figure`` (a static matplotlib
    figure, redrawn whole).
    """

    description = ""
    interval = 0.04   # seconds: while a control moves, at most one redraw per interval

    def __init__(self):
        self.out = W.Output()
        self.readout = W.HTML()
        self.result: dict = {}
        self.controls: list[W.Widget] = []
        self.fig: go.FigureWidget | None = None   # made by the first refresh (``build``), then changed in place
        self.side: W.Widget | None = None          # shown left of the figure (the temperature explorer's digit)
        self._last_draw, self._trailing = 0.0, None

    @property
    def widget(self) -> W.Widget:
        header = W.HTML(f"<b>{self.description}</b>") if self.description else W.HTML()
        parts = [header, W.HBox(self.controls), self.readout]
        if self.fig is not None:
            parts.append(W.HBox([self.side, self.fig]) if self.side is not None else self.fig)
        return W.VBox(parts + [self.out])

    def _ipython_display_(self):
        display(self.widget)

    def _watch(self, *controls):
        for c in controls:
            c.observe(self._changed, names="value")

    def _changed(self, change=None):
        """A control moved. Set from code (a cell, a test): redraw at once. Moved in the browser (the
        change arrives as a comm message, under the widget's property lock) inside a kernel: redraw
        now, or, if the last redraw is under ``interval`` old, once the interval has passed, with
        whatever the controls say then: the latest value, never a replay of the drag."""
        from_browser = change is not None and bool(getattr(change["owner"], "_property_lock", None))
        loop = _running_loop()
        if not from_browser or loop is None:
            return self.refresh()
        if self._trailing is not None:
            return                  # a redraw is already due; it will read the controls as they are then
        wait = self._last_draw + self.interval - time.monotonic()
        if wait <= 0:
            self.refresh()
        else:
            self._trailing = loop.call_later(wait, self._draw_latest)

    def _draw_latest(self):
        self._trailing = None
        self.refresh()

    def _run_with(self, pending):
        """Recompute once with ``self._pending = pending`` (what a button asked for), the button
        disabled meanwhile; ``_pending`` is None again afterwards, even if the run raised."""
        self._pending = pending
        self.button.disabled = True
        try:
            self.refresh()
        finally:
            self.button.disabled = False
            self._pending = None

    def refresh(self):
        self._last_draw = time.monotonic()
        if self.fig is None:
            self.fig = self.build()
        with self.out:  # inside a kernel an exception is shown here, not swallowed
            self.result = self.compute()     # a training panel's progress bars show here meanwhile
            self.readout.value = self.text()
            if self.fig is not None:
                # finished progress bars, or an earlier error: this run worked (in a kernel the outputs
                # are the browser's, not known here, so clear without asking)
                if hasattr(get_ipython(), "kernel"):
                    clear_output()
                with self.fig.batch_update():
                    self.draw(self.fig)
                return
            clear_output(wait=True)
            fig = self.figure()
            if fig is not None:
                display(fig)

    # subclasses fill these in
    def compute(self) -> dict:
        raise NotImplementedError

    def text(self) -> str:
        return ""

    def build(self) -> go.FigureWidget | None:
        """The plotly figure, made once (None: the panel draws a matplotlib ``figure`` instead)."""
        return None

    def draw(self, fig: go.FigureWidget) -> None:
        """Put ``self.result`` into the figure's existing traces."""

    def figure(self):
        return None


class TemperatureExplorer(Panel):
    """One digit, the teacher's softened distribution at T, its entropy, the uniform line."""

    description = "Temperature explorer: pick a digit and slide T"

    def __init__(self, teacher_logits, images, labels, *, choices=None, temperature: float = 1.0):
        super().__init__()
        self.logits, self.images, self.labels = teacher_logits, images, labels
        if choices is None:  # the most ambiguous digits first, then a few clear ones
            choices = metrics.ambiguous_examples(teacher_logits, 8) + list(range(4))
        choices = list(choices)
        if not choices or not all(0 <= int(i) < len(labels) for i in choices):
            raise ValueError(f"choices must list indices of the {len(labels)} examples, got {choices!r}")
        _check_temperature(temperature, 0.5, 30)
        probs1 = torch.softmax(teacher_logits.float(), -1)
        options = []
        for i in choices:
            p, k = probs1[i].max(0)
            options.append((f"#{i}: a {int(labels[i])} (teacher: {int(k)}, {float(p):.0%})", int(i)))
        self.digit = W.Dropdown(options=options, value=options[0][1], description="digit")
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=math.log10(0.5),
                                            max=math.log10(30), step=0.01, description="T",
                                            continuous_update=True, readout_format=".2f")
        self.scale = W.ToggleButtons(options=["linear", "log"], value="linear", description="scale")
        self.controls = [self.digit, self.temperature, self.scale]
        self._shown_digit = None
        self._watch(*self.controls)
        self.refresh()

    def compute(self):
        i, t = self.digit.value, float(self.temperature.value)
        probs = losses.soften(self.logits[i:i + 1].float(), t)[0]
        return {"index": i, "temperature": t, "probs": probs,
                "entropy": float(metrics.entropy(probs)), "label": int(self.labels[i]),
                "log_scale": self.scale.value == "log"}

    def text(self):
        r = self.result
        p = r["probs"]
        order = p.argsort(descending=True).tolist()
        others = ", ".join(f"{k}: {float(p[k]):.3f}" for k in order[1:4])
        t, ent, p_true = r["temperature"], r["entropy"], float(p[r["label"]])
        return (f"T = {_span('temperature', f'{t:.2f}')} &nbsp; "
                f"entropy = {_span('entropy', f'{ent:.3f}')} nats "
                f"(uniform: {math.log(len(p)):.3f}) &nbsp; "
                f"p(true class {r['label']}) = {_span('p-true', f'{p_true:.3f}')} &nbsp; "
                f"runners-up: {others}")

    def build(self):
        c = int(self.logits.shape[-1])
        self.side = W.Image(format="png", width=150, height=150)   # the digit, redrawn only when it changes
        fig = live_figure(height=300, width=560)
        fig.add_bar(x=list(range(c)), y=[0.0] * c, name="p(class)", marker_line=dict(color="black", width=0.5),
                    hovertemplate="class %{x}: p = %{y:.3f}<extra></extra>")
        fig.add_scatter(x=[-0.5, c - 0.5], y=[1 / c, 1 / c], mode="lines", name=f"uniform 1/{c}",
                        line=dict(color="black", dash="dot", width=1), hoverinfo="name")
        fig.update_xaxes(title_text="class", dtick=1)
        fig.update_layout(showlegend=False)
        return fig

    def draw(self, fig):
        """A move of T changes the bars' heights only (a restyle: cheap to render); the picture, the colours
        and the titles change with the digit or the scale."""
        r = self.result
        fig.data[0].y = _r(r["probs"])
        shown = (r["index"], r["log_scale"])
        if self._shown_digit == shown:
            return
        self.side.value = plots.digit_png(self.images[r["index"]])
        colours = [plots.STYLE["distilled"][0]] * len(r["probs"])
        colours[r["label"]] = plots.STYLE["scratch"][0]
        fig.data[0].marker.color = colours
        fig.layout.yaxis.update(type="log" if r["log_scale"] else "linear",
                                range=[-6, 0.05] if r["log_scale"] else [0, 1.02], title_text="p(class) at T")
        fig.layout.title.text = (f"test digit #{r['index']} (label {r['label']}): the teacher's soft targets "
                                 f"(true class in orange)")
        self._shown_digit = shown


class DarkKnowledgeMap(Panel):
    """Class-similarity matrix from the teacher's averaged soft targets at T."""

    description = "Dark-knowledge map: which digits does the teacher think look alike?"

    def __init__(self, teacher_logits, labels, *, temperature: float = 4.0, top: int = 5):
        super().__init__()
        self.logits, self.labels, self.top = teacher_logits, labels, top
        _check_temperature(temperature, 0.5, 30)
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=math.log10(0.5),
                                            max=math.log10(30), step=0.01, description="T",
                                            continuous_update=True, readout_format=".2f")
        self.controls = [self.temperature]
        self._watch(self.temperature)
        self.refresh()

    def compute(self):
        t = float(self.temperature.value)
        matrix = metrics.class_similarity(self.logits, self.labels, t)                    # (C, C)
        return {"temperature": t, "matrix": matrix, "pairs": metrics.confusable_pairs(matrix, self.top)}

    def text(self):
        pairs = " &nbsp; ".join(_span("pair", f"{a}-{b}") + f" ({s:.3f})" for a, b, s in self.result["pairs"])
        t = self.result["temperature"]
        return f"T = {_span('temperature', f'{t:.2f}')} &nbsp; most confusable: {pairs}"

    def build(self):
        c = int(self.logits.shape[-1])
        names = [str(k) for k in range(c)]
        fig = live_figure(height=420, width=520)
        fig.add_heatmap(z=[[None] * c for _ in range(c)], x=names, y=names, colorscale="Viridis",
                        colorbar=dict(title="mean p", thickness=12),
                        hovertemplate="a %{y} looks like a %{x}: p = %{z:.3f}<extra></extra>")
        fig.update_xaxes(title_text="looks like class", type="category")
        fig.update_yaxes(title_text="true class", type="category", autorange="reversed")
        fig.update_layout(title_text="dark knowledge: mean p_T(k | class c) at the slider's T")
        return fig

    def draw(self, fig):
        m = self.result["matrix"].clone()
        m.fill_diagonal_(float("nan"))                    # the diagonal (a 3 looks like a 3) would drown the rest
        fig.data[0].z = [[None if math.isnan(v) else round(v, 4) for v in row] for row in m.tolist()]


class DistillationPlayground(Panel):
    """Distill a tiny MLP at the chosen T, alpha and seed; each run adds a point to the plot.

    Training one setting under several seeds (``seed_spread``) shows the run-to-run noise that any
    comparison of two settings has to beat."""

    description = "Distillation playground: choose T, alpha and a seed, then Train"

    def __init__(self, teacher_logits, train_set, test_set, *, hidden=(30, 30), epochs: int = 5,
                 lr: float = 3e-3, seed: int = 0, teacher_errors: int | None = None):
        super().__init__()
        self.teacher_logits, self.train_set, self.test_set = teacher_logits, train_set, test_set
        self.hidden, self.seed, self.teacher_errors = tuple(hidden), seed, teacher_errors
        self.epochs, self.lr = epochs, lr
        self.temperature = W.FloatSlider(value=4.0, min=1.0, max=20.0, step=0.5, description="T",
                                         continuous_update=False)
        self.alpha = W.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.05, description="alpha",
                                   continuous_update=False)
        self.seed_box = W.BoundedIntText(value=seed, min=0, max=999, description="seed",
                                         layout=W.Layout(width="160px"))
        self.button = W.Button(description="Train", button_style="primary", icon="play",
                               tooltip="distill a student at these settings")
        self.button.on_click(lambda _b: self.train())
        self.controls = [self.temperature, self.alpha, self.seed_box, self.button]
        self.runs: list[dict] = []
        self.scratch_errors: int | None = None
        self.last_student = None
        self._pending = None
        self.refresh()

    def distill_config(self, temperature: float, alpha: float, seed: int | None = None) -> train.DistillConfig:
        return train.DistillConfig(epochs=self.epochs, lr=self.lr, max_shift=0,
                                   seed=self.seed if seed is None else seed,
                                   temperature=temperature, alpha=alpha)

    def train(self, seed: int | None = None):
        """Train the scratch baseline (once, at the first seed) and a student at the sliders' T and alpha,
        from ``seed`` (default: the seed box)."""
        seed = int(self.seed_box.value) if seed is None else int(seed)
        self._run_with((float(self.temperature.value), float(self.alpha.value), seed))

    def seed_spread(self, seeds=(0, 1, 2)) -> dict:
        """The sliders' setting trained from each of ``seeds`` (only the seeds not run yet are trained):
        ``{"temperature", "alpha", "errors": [one per seed], "mean", "std"}``."""
        t, a = float(self.temperature.value), float(self.alpha.value)
        for s in seeds:
            if not any(r["temperature"] == t and r["alpha"] == a and r["seed"] == s for r in self.runs):
                self.train(seed=s)
        errors = [next(r["errors"] for r in self.runs if (r["temperature"], r["alpha"], r["seed"]) == (t, a, s))
                  for s in seeds]
        return {"temperature": t, "alpha": a, "seeds": list(seeds), "errors": errors,
                **{k: v for k, v in metrics.mean_std(errors).items() if k != "values"}}

    def compute(self):
        if self._pending is not None:
            t, a, seed = self._pending
            test_x, test_y = self.test_set.tensors
            if self.scratch_errors is None:
                config.seed_everything(self.seed)
                scratch = models.mlp(self.hidden)
                train.fit(scratch, self.train_set, self.distill_config(t, 1.0), desc="scratch")
                self.scratch_errors = metrics.error_count(metrics.predict(scratch, test_x), test_y)
            config.seed_everything(seed)
            student = models.mlp(self.hidden)
            train.distill(student, self.teacher_logits, self.train_set, self.distill_config(t, a, seed),
                          desc=f"distill T={t:g} alpha={a:g} seed={seed}")
            self.last_student = student
            errors = metrics.error_count(metrics.predict(student, test_x), test_y)
            self.runs.append({"temperature": t, "alpha": a, "seed": seed, "errors": errors})
        return {"runs": list(self.runs), "last": self.runs[-1] if self.runs else None,
                "scratch_errors": self.scratch_errors, "teacher_errors": self.teacher_errors}

    def text(self):
        last = self.result["last"]
        size = "-".join(map(str, self.hidden))
        if last is None:
            return f"Press Train to distill a {size} student ({self.epochs} epochs on {len(self.train_set):,} digits)."
        t, a = last["temperature"], last["alpha"]
        return (f"last run: T = {_span('temperature', f'{t:g}')}, "
                f"alpha = {_span('alpha', f'{a:g}')}, seed {_span('seed', last['seed'])} → "
                f"{_span('errors', last['errors'])} test errors; the same {size} student from scratch "
                f"(seed {self.seed}): {_span('scratch-errors', self.result['scratch_errors'])}; "
                f"teacher: {self.teacher_errors}")

    def build(self):
        fig = live_figure(height=320, width=640)
        fig.add_scatter(x=[], y=[], mode="markers", name="distilled (colour = alpha)", customdata=[],
                        marker=dict(symbol="triangle-up", size=12, line=dict(color="black", width=1),
                                    color=[], colorscale="Cividis", cmin=0, cmax=1,
                                    colorbar=dict(title="alpha", thickness=12)),
                        hovertemplate="T = %{x:g}, alpha = %{marker.color:.2f}, seed %{customdata}: "
                                      "%{y} test errors<extra></extra>")
        for role, name in (("scratch", "the same student from scratch"), ("teacher", "teacher")):
            fig.add_scatter(x=[1, 20], y=[None, None], mode="lines", name=name, line=role_line(role),
                            hovertemplate=f"{name}: %{{y}} test errors<extra></extra>")
        fig.update_xaxes(type="log", title_text="temperature T", tickvals=[1, 2, 4, 8, 16], range=[-0.05, 1.35])
        fig.update_yaxes(title_text=f"test errors (of {len(self.test_set):,})")
        fig.update_layout(title_text="your distillation runs", legend=dict(x=1.15, y=1, font=dict(size=10)))
        return fig

    def draw(self, fig):
        runs = self.result["runs"]
        fig.data[0].x = [r["temperature"] for r in runs]
        fig.data[0].y = [r["errors"] for r in runs]
        fig.data[0].customdata = [r["seed"] for r in runs]
        fig.data[0].marker.color = [r["alpha"] for r in runs]
        fig.data[1].y = [self.result["scratch_errors"]] * 2
        fig.data[2].y = [self.result["teacher_errors"]] * 2


class BiasPanel(Panel):
    """Hinton's omitted-class fix: add a bias to one class's logit and watch that class come back."""

    description = "Raise the omitted class's bias"

    def __init__(self, logits, labels, *, cls: int = 3, chosen: float | None = None,
                 grid=None, bias: float = 0.0):
        self.logits, self.labels, self.cls, self.chosen = logits, labels, cls, chosen
        self.grid = list(grid) if grid is not None else [x / 4 for x in range(-8, 41)]
        self.curve = [metrics.class_bias_effect(logits, labels, cls, b) for b in self.grid]
        super().__init__()
        self.bias = W.FloatSlider(value=bias, min=min(self.grid), max=max(self.grid), step=0.25,
                                  description=f"bias of {cls}", continuous_update=True)
        self.controls = [self.bias]
        self._watch(self.bias)
        self.refresh()

    def compute(self):
        return metrics.class_bias_effect(self.logits, self.labels, self.cls, float(self.bias.value))

    def text(self):
        r = self.result
        chosen = (f" &nbsp; (bias chosen on validation data: {self.chosen:g})"
                  if self.chosen is not None else "")
        bias = r["bias"]
        return (f"bias = {_span('bias', f'{bias:g}')}: "
                f"{_span('class-correct', r['class_correct'])} of {r['class_total']} test {self.cls}s right "
                f"({r['class_correct'] / max(r['class_total'], 1):.1%}), "
                f"{_span('errors', r['errors'])} test errors in all{chosen}")

    def build(self):
        fig = live_figure(height=300, width=680, specs=[[{"secondary_y": True}]])
        pct = [100 * c["class_correct"] / max(c["class_total"], 1) for c in self.curve]
        fig.add_scatter(x=self.grid, y=_r(pct, 2), mode="lines", name=f"% of test {self.cls}s right",
                        line=role_line("distilled"),
                        hovertemplate=f"bias %{{x:g}}: %{{y:.1f}}% of the {self.cls}s right<extra></extra>")
        fig.add_scatter(x=self.grid, y=[c["errors"] for c in self.curve], mode="lines",
                        name="test errors (all digits)", line=role_line("scratch"), secondary_y=True,
                        hovertemplate="bias %{x:g}: %{y} test errors in all<extra></extra>")
        fig.add_scatter(x=[0, 0], y=[0, 100], mode="lines", name="this bias", line=dict(color="black", width=1),
                        hoverinfo="skip")
        if self.chosen is not None:
            fig.add_scatter(x=[self.chosen] * 2, y=[0, 100], mode="lines", name="chosen on validation",
                            line=dict(color="black", dash="dot", width=1), hoverinfo="name")
        fig.update_xaxes(title_text=f"bias added to the {self.cls}'s logit")
        fig.update_yaxes(title_text=f"% of {self.cls}s right", range=[0, 101], secondary_y=False)
        fig.update_yaxes(title_text="test errors (all digits)", secondary_y=True)
        fig.update_layout(legend=dict(x=1.12, y=1, font=dict(size=10)))
        return fig

    def draw(self, fig):
        fig.data[2].x = [self.result["bias"]] * 2


class LossMixer(Panel):
    """DistilBERT's three loss weights and T: re-run a short distillation, compare with the teacher."""

    description = "Loss mixer: weigh the three signals, then Run a short distillation"

    def __init__(self, teacher, tok, train_blocks, val_blocks, budget, *, teacher_accuracy: float | None = None):
        super().__init__()
        self.teacher, self.tok, self.budget = teacher, tok, budget
        self.train_blocks, self.val_blocks = train_blocks, val_blocks
        self.teacher_accuracy = (teacher_accuracy if teacher_accuracy is not None
                                 else ch02.mlm_score(teacher, tok, val_blocks)["accuracy"])
        slider = lambda name, value, hi: W.FloatSlider(value=value, min=0.0, max=hi, step=0.5,
                                                       description=name, continuous_update=False)
        self.w_soft, self.w_mlm, self.w_cos = slider("w_soft", budget.w_soft, 10), \
            slider("w_mlm", budget.w_mlm, 10), slider("w_cos", budget.w_cos, 10)
        self.temperature = W.FloatSlider(value=budget.temperature, min=0.5, max=8.0, step=0.5,
                                         description="T", continuous_update=False)
        self.button = W.Button(description="Run", button_style="primary", icon="play",
                               tooltip="distill a fresh student with these weights")
        self.button.on_click(lambda _b: self.run())
        self.controls = [W.VBox([self.w_soft, self.w_mlm]), W.VBox([self.w_cos, self.temperature]), self.button]
        self.runs: list[dict] = []
        self.last_student, self._pending = None, False
        self.refresh()

    def settings(self) -> dict:
        return {"w_soft": float(self.w_soft.value), "w_mlm": float(self.w_mlm.value),
                "w_cos": float(self.w_cos.value), "temperature": float(self.temperature.value)}

    def run(self):
        self._run_with(True)

    def compute(self):
        if self._pending:
            s = self.settings()
            student, history = ch02.distill(self.teacher, self.tok, self.train_blocks, self.budget,
                                               **s, progress=True)
            self.last_student = student
            score = ch02.mlm_score(student, self.tok, self.val_blocks)
            self.runs.append({**s, "accuracy": score["accuracy"], "perplexity": score["perplexity"],
                              "history": history.records})
        return {"runs": list(self.runs), "last": self.runs[-1] if self.runs else None,
                "teacher_accuracy": self.teacher_accuracy}

    def text(self):
        last = self.result["last"]
        if last is None:
            return (f"Press Run: a fresh student (teacher layers {list(self.budget.student_layers)}) "
                    f"is distilled for {self.budget.distill_steps} steps. Teacher's masked-token accuracy: "
                    f"{_span('teacher-accuracy', f'{self.teacher_accuracy:.3f}')}")
        acc, ratio = last["accuracy"], last["accuracy"] / self.teacher_accuracy
        return (f"w_soft = {last['w_soft']:g}, w_mlm = {last['w_mlm']:g}, w_cos = {last['w_cos']:g}, "
                f"T = {last['temperature']:g} → student masked-token accuracy "
                f"{_span('accuracy', f'{acc:.3f}')} vs teacher "
                f"{_span('teacher-accuracy', f'{self.teacher_accuracy:.3f}')} ({ratio:.0%} of it)")

    def build(self):
        fig = live_figure(height=300, width=640)
        fig.add_bar(x=[], y=[], name="student", marker=dict(color=plots.STYLE["distilled"][0],
                                                            line=dict(color="black", width=0.5)),
                    hovertemplate="%{x}: masked-token accuracy %{y:.3f}<extra></extra>")
        fig.add_scatter(x=[], y=[], mode="lines", name="teacher", line=role_line("teacher"),
                        hovertemplate="teacher: %{y:.3f}<extra></extra>")
        fig.update_xaxes(title_text="w_soft / w_mlm / w_cos, temperature", type="category")
        fig.update_yaxes(title_text="val masked-token accuracy", rangemode="tozero")
        fig.update_layout(title_text="your runs")
        return fig

    def draw(self, fig):
        labels = [f"{r['w_soft']:g}/{r['w_mlm']:g}/{r['w_cos']:g}, T={r['temperature']:g} (run {i + 1})"
                  for i, r in enumerate(self.runs)]
        fig.data[0].x, fig.data[0].y = labels, _r([r["accuracy"] for r in self.runs])
        fig.data[1].x, fig.data[1].y = labels, [round(self.teacher_accuracy, 4)] * len(labels)


class KLFitExplorer(Panel):
    """A unimodal student fitted to a bimodal teacher by forward KL, reverse KL or generalised JSD."""

    description = "Forward vs reverse KL: fit one Gaussian to a two-peaked teacher"
    OBJECTIVES = {"forward KL": 0.0, "reverse KL": 1.0, "JSD (β)": None}

    def __init__(self, *, objective: str = "forward KL", beta: float = 0.5, steps: int = 300):
        super().__init__()
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective must be one of {list(self.OBJECTIVES)}, got {objective!r}")
        self.steps = steps
        self.teacher_logits = ch03.bimodal_logits()
        self.objective = W.ToggleButtons(options=list(self.OBJECTIVES), value=objective, description="fit by")
        self.beta = W.FloatSlider(value=beta, min=0.0, max=1.0, step=0.05, description="β",
                                  continuous_update=False, disabled=objective != "JSD (β)")
        self.objective.observe(lambda ch: setattr(self.beta, "disabled", ch["new"] != "JSD (β)"), names="value")
        self.controls = [self.objective, self.beta]
        self._watch(*self.controls)
        self.refresh()

    def compute(self):
        fixed = self.OBJECTIVES[self.objective.value]
        beta = float(self.beta.value) if fixed is None else fixed
        fit = ch03.fit_gaussian(self.teacher_logits, beta, steps=self.steps)
        return {**fit, "objective": self.objective.value, "between": ch03.mode_mass(fit["student_probs"])}

    def text(self):
        r = self.result
        beta, mu, sigma, between = f"{r['beta']:.2f}", f"{r['mu']:+.2f}", f"{r['sigma']:.2f}", f"{r['between']:.0%}"
        return (f"{r['objective']} (β = {_span('beta', beta)}): student mean {_span('mu', mu)}, "
                f"width σ = {_span('sigma', sigma)}, mass between the peaks {_span('between', between)} "
                f"(teacher: {ch03.mode_mass(r['teacher_probs']):.0%}); "
                f"KL(p‖q) = {r['forward_kl']:.3f}, KL(q‖p) = {r['reverse_kl']:.3f}")

    def build(self):
        grid = _r(ch03.GRID.tolist(), 3)
        teacher = torch.softmax(self.teacher_logits, -1)
        fig = live_figure(height=280, width=680)
        fig.add_scatter(x=grid, y=_r(teacher.tolist(), 5), mode="lines", fill="tozeroy", name="teacher p (two modes)",
                        line=dict(color="#999999"), fillcolor="rgba(153,153,153,0.35)",
                        hovertemplate="x = %{x:.2f}: teacher p = %{y:.4f}<extra></extra>")
        fig.add_scatter(x=grid, y=[0.0] * len(grid), mode="lines", name="student q", line=dict(
                        color=plots.STYLE["distilled"][0], width=3),
                        hovertemplate="x = %{x:.2f}: student q = %{y:.4f}<extra></extra>")
        fig.update_xaxes(title_text="x (the 'vocabulary')")
        fig.update_yaxes(title_text="probability")
        fig.update_layout(legend=dict(x=0.01, y=0.99, font=dict(size=10)))
        return fig

    def draw(self, fig):
        r = self.result
        fig.data[1].y = _r(r["student_probs"].tolist(), 5)
        fig.data[1].name = f"student q ({r['objective']}, β = {r['beta']:.2f})"   # a slider release: rare


class NextTokenExplorer(Panel):
    """Type a prompt: each model's next-token distribution at temperature T, side by side."""

    description = "Next-token explorer: the teacher's and the student's next-token distributions"

    def __init__(self, named_models: dict, tokenizer, *, prompt: str = "ROMEO:\nO, she doth teach the",
                 temperature: float = 1.0, top: int = 8):
        super().__init__()
        if not named_models:
            raise ValueError("give at least one model, e.g. {'teacher': teacher, 'student': student}")
        self.models, self.tok, self.top = dict(named_models), tokenizer, top
        self._prompt_logits: tuple[str, dict, int] | None = None   # the last prompt's logits: T alone is cheap
        self.prompt = W.Textarea(value=prompt, description="prompt", continuous_update=False,
                                 layout=W.Layout(width="420px", height="60px"))
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=math.log10(0.25), max=1.0,
                                            step=0.01, description="T", continuous_update=True,
                                            readout_format=".2f")
        self.controls = [self.prompt, self.temperature]
        self._watch(*self.controls)
        self.refresh()

    @torch.no_grad()
    def _logits(self) -> tuple[dict, int]:
        """Each model's next-token logits ``(1, V)`` after the prompt, computed once per prompt."""
        if self._prompt_logits is None or self._prompt_logits[0] != self.prompt.value:
            ids = [text.separator_id(self.tok)] + self.tok(self.prompt.value, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids])                                              # (1, S)
            logits = {}
            for name, model in self.models.items():
                limit = getattr(model.config, "n_positions", None) or len(ids)
                dev = next(model.parameters()).device
                logits[name] = model(input_ids=x[:, -limit:].to(dev)).logits[:, -1].float().cpu()   # (1, V)
            self._prompt_logits = (self.prompt.value, logits, len(ids))
        return self._prompt_logits[1], self._prompt_logits[2]

    def compute(self):
        t = float(self.temperature.value)
        logits, n_ids = self._logits()
        probs = {name: losses.soften(z, t)[0] for name, z in logits.items()}                   # (V,)
        top = {name: [(self.tok.decode([int(i)]), float(p[i])) for i in p.argsort(descending=True)[:self.top]]
               for name, p in probs.items()}
        names = list(probs)
        kl = None
        if len(names) >= 2:  # KL(first || second): what the student misses of the teacher's distribution
            kl = float(losses.forward_kl(logits[names[1]].double(), logits[names[0]].double(), temperature=t))
        return {"temperature": t, "n_tokens": n_ids - 1, "probs": probs, "top": top,
                "entropy": {n: float(metrics.entropy(p)) for n, p in probs.items()}, "kl": kl}

    def text(self):
        r = self.result
        t = f"{r['temperature']:.2f}"
        parts = [f"T = {_span('temperature', t)}, {r['n_tokens']} prompt tokens"]
        for n, e in r["entropy"].items():
            best, p = r["top"][n][0]
            parts.append(f"{n}: top {_span('top-' + n, repr(best))} ({p:.0%}), entropy {e:.2f} nats")
        if r["kl"] is not None:
            first, second = list(r["probs"])[:2]
            kl = f"{r['kl']:.3f}"
            parts.append(f"KL({first} ‖ {second}) = {_span('kl', kl)}")
        return " &nbsp;·&nbsp; ".join(parts)

    def build(self):
        names = list(self.models)
        fig = live_figure(cols=len(names), subplot_titles=names, height=300, width=max(360, 340 * len(names)),
                          horizontal_spacing=0.18)
        for i, name in enumerate(names):
            role = name if name in plots.STYLE else "distilled" if i else "teacher"
            fig.add_bar(x=[], y=[], orientation="h", name=name, marker_color=plots.STYLE[role][0],
                        hovertemplate="%{y}: p = %{x:.3f}<extra></extra>", row=1, col=i + 1)
            fig.update_xaxes(range=[0, 1], title_text="probability", row=1, col=i + 1)
            fig.update_yaxes(type="category", autorange="reversed", row=1, col=i + 1)
        fig.update_layout(showlegend=False)
        return fig

    def draw(self, fig):
        for trace, pairs in zip(fig.data, self.result["top"].values()):
            labels, seen = [], set()
            for tok, _ in pairs:   # a category axis needs distinct labels; show line breaks and empty pieces
                label = repr(tok)[1:-1] or "∅"
                while label in seen:
                    label += " "
                seen.add(label)
                labels.append(label)
            trace.y, trace.x = labels, _r([p for _, p in pairs])


class NoisePanel(Panel):
    """Chapter 04: flip a share of the training labels, train generation 0 on them and one born-again
    generation from its soft targets; each run adds a point per generation to the plot."""

    description = "Label noise: choose the share of flipped training labels, then Train"

    def __init__(self, budget, train_set, test_set, *, seed: int = 0):
        super().__init__()
        from dataclasses import replace
        self.budget = replace(budget, generations=2)
        self.train_set, self.test_set, self.seed = train_set, test_set, seed
        self.noise = W.FloatSlider(value=0.3, min=0.0, max=0.8, step=0.1, description="label noise",
                                   continuous_update=False, readout_format=".0%")
        self.button = W.Button(description="Train", button_style="primary", icon="play",
                               tooltip="train generation 0 on the noisy labels and generation 1 from it")
        self.button.on_click(lambda _b: self.train())
        self.controls = [self.noise, self.button]
        self.runs: list[dict] = []
        self._pending = None
        self.refresh()

    def train(self):
        self._run_with(round(float(self.noise.value), 4))

    def compute(self):
        if self._pending is not None:
            r = ch04.born_again(self.budget, self.seed, noise=self._pending, data=self.train_set,
                              test=self.test_set)
            g0, g1 = r["rows"]
            self.runs = [x for x in self.runs if x["noise"] != self._pending]
            self.runs.append({"noise": self._pending, "generation 0": g0["test_errors"],
                              "generation 1": g1["test_errors"], "ensemble": g1["ensemble_errors"],
                              "agreement": g1["agreement_with_previous"]})
            self.runs.sort(key=lambda x: x["noise"])
            self.last = self.runs[[x["noise"] for x in self.runs].index(self._pending)]
        return {"runs": list(self.runs), "last": getattr(self, "last", None)}

    def text(self):
        last = self.result["last"]
        if last is None:
            return (f"Press Train: generation 0 and one born-again generation, {self.budget.epochs} epochs each "
                    f"on {len(self.train_set):,} digits.")
        noise, agree = f"{last['noise']:.0%}", f"{last['agreement']:.1%}"
        return (f"noise {_span('noise', noise)}: generation 0 "
                f"{_span('gen0', last['generation 0'])} test errors, generation 1 "
                f"{_span('gen1', last['generation 1'])}, their ensemble {_span('ensemble', last['ensemble'])}; "
                f"generation 1 agrees with generation 0 on {_span('agreement', agree)} "
                f"of the test digits")

    def build(self):
        fig = live_figure(height=300, width=640)
        styles = {"generation 0": ("teacher", "circle"), "generation 1": ("distilled", "triangle-up"),
                  "ensemble": ("published", "x")}
        for name, (role, symbol) in styles.items():
            fig.add_scatter(x=[], y=[], mode="lines+markers", name=name, line=role_line(role),
                            marker=dict(symbol=symbol, size=8),
                            hovertemplate=f"{name}, %{{x:.0f}}% flipped: %{{y}} test errors<extra></extra>")
        fig.update_xaxes(title_text="flipped training labels (%)", range=[-2, 82], dtick=10)
        fig.update_yaxes(title_text="test errors")
        fig.update_layout(title_text=f"born-again on noisy labels ({len(self.test_set):,} clean test digits)")
        return fig

    def draw(self, fig):
        xs = [100 * x["noise"] for x in self.runs]
        for trace in fig.data:
            trace.x, trace.y = xs, [x[trace.name] for x in self.runs]


class PruneExplorer(Panel):
    """Chapter 05: prune a trained MLP by weight magnitude *without* retraining. Slide the share of weights
    zeroed (one threshold for all layers, or the same share in each) and read its test errors, beside the
    cascade's rounds, which distil the pruned model back after each cut. Every share is computed up front
    (``ch05_staged.prune_curve``), so the slider redraws as it moves."""

    description = "Prune by magnitude, no retraining: slide the share of weights zeroed"

    def __init__(self, model, test, *, cascade_rows=None, share: float = 0.5, scope: str = "global"):
        self.shares = list(ch05.PRUNE_SHARES)
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        if not any(abs(share - s) < 1e-9 for s in self.shares):
            raise ValueError(f"share must be one of {self.shares}, got {share!r}")
        self.curves = {sc: ch05.prune_curve(model, test, self.shares, sc) for sc in ("global", "layer")}
        self.layers = [f"{m.in_features}→{m.out_features}" for m in model.modules() if isinstance(m, torch.nn.Linear)]
        self.cascade_rows, self.n_test = list(cascade_rows or []), len(test)
        super().__init__()
        self.share = W.FloatSlider(value=share, min=0.0, max=self.shares[-1], step=0.05, readout_format=".0%",
                                   description="share zeroed", continuous_update=True)
        self.scope = W.ToggleButtons(options=[("one threshold", "global"), ("each layer", "layer")], value=scope,
                                     style={"button_width": "110px"})
        self.controls = [self.share, self.scope]
        self._watch(self.share, self.scope)
        self.refresh()

    def compute(self):
        i = min(range(len(self.shares)), key=lambda k: abs(self.shares[k] - float(self.share.value)))
        return {"scope": self.scope.value, **self.curves[self.scope.value][i]}

    def text(self):
        r, start = self.result, self.curves["global"][0]
        share, nonzero = f"{r['share']:.0%}", f"{r['nonzero']:,}"
        layers = ", ".join(f"{name} {z:.0%}" for name, z in zip(self.layers, r["layer_zero"]))
        how = "one threshold" if r["scope"] == "global" else "each layer"
        return (f"{_span('share', share)} zeroed ({how}): {_span('nonzero', nonzero)} nonzero parameters, "
                f"{_span('errors', r['test_errors'])} test errors (unpruned: {start['test_errors']}); "
                f"zeros per layer: {layers}")

    def build(self):
        fig = live_figure(height=300, width=680)
        names = {"global": "one threshold, no retraining", "layer": "each layer, no retraining"}
        for i, (scope, rows) in enumerate(self.curves.items()):
            fig.add_scatter(x=[100 * r["share"] for r in rows], y=[r["test_errors"] for r in rows],
                            mode="lines", name=names[scope], line=role_line("scratch" if i else "distilled"),
                            hovertemplate=f"{names[scope]}: %{{x:.0f}}% zeroed, %{{y}} test errors<extra></extra>")
        if self.cascade_rows:
            fig.add_scatter(x=[100 * r["sparsity"] for r in self.cascade_rows],
                            y=[r["test_errors"] for r in self.cascade_rows], mode="markers",
                            name="cascade: pruned, then distilled back", marker=dict(symbol="x", size=9,
                                                                                     color="black"),
                            hovertemplate="cascade round: %{x:.0f}% zero, %{y} test errors<extra></extra>")
        fig.add_scatter(x=[], y=[], mode="markers", name="this share", marker=dict(size=12, color="black",
                                                                                   symbol="circle-open"),
                        hoverinfo="skip")
        fig.update_xaxes(title_text="weights zeroed (%)", range=[-2, 97])
        fig.update_yaxes(title_text=f"test errors (of {self.n_test:,}, log scale)", type="log")
        fig.update_layout(legend=dict(x=0.01, y=0.99, font=dict(size=10)))
        return fig

    def draw(self, fig):
        fig.data[-1].x, fig.data[-1].y = [100 * self.result["share"]], [self.result["test_errors"]]


class GapReport(Panel):
    """Chapter 06: pick a family, a teacher and a student; see their headline metric, the per-category
    gap sorted (``ch06_evaluation.gap_report``), and the categories where the student falls shortest,
    with examples. ``bundles`` maps a family's name to its bundle (``ch06_evaluation.mnist_bundle`` /
    ``lm_bundle``); a family in ``status`` (``ch06_evaluation.family_status()``) without a bundle is
    listed as unavailable, with the command that creates its teacher."""

    description = "Gap report: where does the student fall short of its teacher?"

    def __init__(self, bundles: dict, status: dict | None = None, *, family: str | None = None, top: int = 3):
        super().__init__()
        self.bundles, self.top = bundles, top
        self.status = status if status is not None else ch06.family_status()
        names = list(dict.fromkeys([*self.status, *bundles]))
        options = [(n if n in bundles else f"{n} (unavailable)", n) for n in names]
        self.family = W.Dropdown(options=options, value=family or next(iter(bundles), names[0]),
                                 description="family")
        self.teacher = W.Dropdown(description="teacher")
        self.student = W.Dropdown(description="student")
        self.by = W.Dropdown(description="split by")
        self.controls = [self.family, self.teacher, self.student, self.by]
        self._quiet = False
        self._fill()
        self.family.observe(lambda _c: (self._fill(), self.refresh()), names="value")
        for c in (self.teacher, self.student, self.by):
            c.observe(lambda _c: None if self._quiet else self.refresh(), names="value")
        self.refresh()

    def _fill(self):
        """Point the teacher / student / split menus at the chosen family's models and categories."""
        self._quiet = True
        try:
            b = self.bundles.get(self.family.value)
            models_ = list(b.models) if b else []
            cats = list(b.categories) if b else []
            for menu, opts in ((self.teacher, models_), (self.student, models_), (self.by, cats)):
                menu.options = opts
                menu.disabled = not opts
            if b:
                self.teacher.value = b.teacher
                self.student.value = "distilled" if "distilled" in models_ else models_[-1]
                self.by.value = cats[0]
        finally:
            self._quiet = False

    def compute(self):
        name = self.family.value
        b = self.bundles.get(name)
        if b is None:
            st = self.status.get(name, {})
            return {"family": name, "available": False,
                    "message": st.get("message", "no bundle was built for this family"), "command": st.get("command")}
        if self.teacher.value == self.student.value:
            return {"family": name, "available": True, "same": True}
        r = ch06.gap_report(b, self.teacher.value, self.student.value, by=self.by.value, top=self.top)
        return {"available": True, "same": False, **r}

    def text(self):
        r = self.result
        if not r["available"]:
            return f"<b>{r['family']}</b>: {_span('unavailable', r['message'])}"
        if r["same"]:
            return "Pick two different models."
        t, s = r["teacher"], r["student"]
        fmt = lambda v: f"{v:,}" if isinstance(v, int) else f"{v:.1f}"
        head = (f"{r['metric']}: {t} {_span('teacher-metric', fmt(r['headline'][t]))}, "
                f"{s} {_span('student-metric', fmt(r['headline'][s]))}. ")
        if not r["worst"]:
            return head + f"The {s} falls short of the {t} in no category of {r['by']}."
        worst = "; ".join(f"{_span('worst', w['category'])} (gap {w['gap']:+.3f})" for w in r["worst"])
        lines = [head + f"Largest shortfalls by {r['by']}: {worst}."]
        for w in r["worst"]:
            ex = w["examples"]
            if ex and "token" in ex[0]:
                lines.append(f"<br>{w['category']}: " + ", ".join(
                    f"<code>{html_escape(e['token'])}</code> ×{e['count']} "
                    f"({e['teacher']:.2f} → {e['student']:.2f} nats)"
                    for e in ex))
            elif ex and "text" in ex[0]:
                lines.append(f"<br>{w['category']}, the {s} wrong and the {t} right: " + " | ".join(
                    f"<i>{html_escape(e['text'][:120])}</i> (label {e['label']})" for e in ex[:3]))
        return "".join(lines)

    def figure(self):
        r = self.result
        if not r["available"] or r["same"]:
            return None
        rows = r["table"].rows[:-1]
        fig = plots.gap_bars([x[0] for x in rows], [x[-1] for x in rows], highlight=len(r["worst"]),
                             xlabel=f"gap in {r['measure']} ({r['student']} - {r['teacher']})",
                             title=f"{r['family']}: {r['student']} vs {r['teacher']}, by {r['by']}")
        display(r["table"])
        b = self.bundles[r["family"]]
        shown = [e for w in r["worst"] for e in w["examples"][:4] if "index" in e and "text" not in e]
        if shown and b.images is not None:
            display(fig)
            return plots.digits_grid([b.images[e["index"]] for e in shown],
                                     [f"{e['label']}: {r['teacher'][:7]} {e['teacher']}, "
                                      f"{r['student'][:7]} {e['student']}"
                                      for e in shown], ncols=min(6, len(shown)))
        return fig


def html_escape(s: str) -> str:
    import html
    return html.escape(s)


class RobustnessPanel(Panel):
    """Chapter 06: noise, shift and rotation sliders; every model's test errors on the perturbed digits
    (``ch06_evaluation.perturb``) and one perturbed digit as the models see it."""

    description = "Robustness: perturb the test digits and watch each model's errors"

    def __init__(self, named_models: dict, test_set, *, seed: int = 0, show: int = 0):
        super().__init__()
        self.models, self.test_set, self.seed, self.show = named_models, test_set, seed, show
        self.noise = W.FloatSlider(value=0.0, min=0.0, max=0.6, step=0.05, description="noise",
                                   continuous_update=False)
        self.shift = W.FloatSlider(value=0.0, min=0.0, max=5.0, step=0.5, description="shift (px)",
                                   continuous_update=False)
        self.angle = W.FloatSlider(value=0.0, min=0.0, max=60.0, step=5.0, description="rotation (°)",
                                   continuous_update=False)
        self.controls = [self.noise, self.shift, self.angle]
        self._watch(*self.controls)
        self.refresh()

    def compute(self):
        setting = {"noise": float(self.noise.value), "shift": float(self.shift.value), "angle": float(self.angle.value)}
        images, y = self.test_set.tensors
        x = ch06.perturb(images, **setting, seed=self.seed)
        errors = {name: metrics.error_count(metrics.predict(m, x, batch_size=500), y)
                  for name, m in self.models.items()}
        return {**setting, "errors": errors, "n": len(y), "example": x[self.show]}

    def text(self):
        r = self.result
        return ", ".join(f"{name} {_span('errors-' + name, r['errors'][name])}" for name in r["errors"]) + \
            f" test errors of {r['n']:,} (noise {r['noise']:.2f}, shift {r['shift']:g} px, rotation {r['angle']:g}°)"

    def figure(self):
        r = self.result
        fig, (a1, a2) = plots._fig((7.5, 2.6), ncols=2)
        plots.digit(r["example"], ax=a1, title="a test digit, perturbed")
        a1.set_box_aspect(1)
        names = list(r["errors"])
        plots.grouped_bars(names, {"test errors": [r["errors"][n] for n in names]}, ylabel="test errors", ax=a2)
        return fig
