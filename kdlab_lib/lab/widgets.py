"""Interactive panels (ipywidgets) built from ``metrics`` and ``plots``.

Every panel keeps what it computed in ``panel.result`` (a dict), so a test or
a curious reader can compare it with the library's own numbers; its key
numbers are also shown as text in ``panel.readout`` (an ``HTML`` widget whose
spans carry a ``kd-...`` class, for browser tests). Callbacks run inside the
panel's ``Output``, so an exception shows up in the notebook instead of
vanishing. Show a panel by making it the last expression of a cell.
"""
from __future__ import annotations

import math

import ipywidgets as W
import numpy as np
import torch
from IPython.display import clear_output, display

from ..chapters import ch02_distilbert as ch02
from ..chapters import ch03_gpt2 as ch03
from ..chapters import ch04_self_distillation as ch04
from ..chapters import ch06_evaluation as ch06
from ..core import config, losses, metrics, models, text, train
from . import plots


def _span(cls: str, text) -> str:
    return f'<span class="kd-{cls}">{text}</span>'


def _check_temperature(t: float, lo: float, hi: float) -> None:
    """A starting T the slider can show (a slider would silently clamp it to its range)."""
    if not lo <= t <= hi:
        raise ValueError(f"temperature must be in [{lo:g}, {hi:g}] (the slider's range), got {t}")


class Panel:
    """Base: controls + readout + output; ``refresh`` recomputes ``result`` and redraws."""

    description = ""

    def __init__(self):
        self.out = W.Output()
        self.readout = W.HTML()
        self.result: dict = {}
        self.controls: list[W.Widget] = []

    @property
    def widget(self) -> W.Widget:
        header = W.HTML(f"<b>{self.description}</b>") if self.description else W.HTML()
        return W.VBox([header, W.HBox(self.controls), self.readout, self.out])

    def _ipython_display_(self):
        display(self.widget)

    def _watch(self, *controls):
        for c in controls:
            c.observe(lambda _change: self.refresh(), names="value")

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
        with self.out:  # inside a kernel an exception is shown here, not swallowed
            self.result = self.compute()
            self.readout.value = self.text()
            clear_output(wait=True)
            fig = self.figure()
            if fig is not None:
                display(fig)

    # subclasses fill these in
    def compute(self) -> dict:
        raise NotImplementedError

    def text(self) -> str:
        return ""

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
                                            continuous_update=False, readout_format=".2f")
        self.scale = W.ToggleButtons(options=["linear", "log"], value="linear", description="scale")
        self.controls = [self.digit, self.temperature, self.scale]
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

    def figure(self):
        r = self.result
        fig, (a1, a2) = plots._fig((7.5, 2.8), ncols=2)
        fig.get_layout_engine().set(w_pad=0.1)
        plots.digit(self.images[r["index"]], ax=a1, title=f"test digit #{r['index']} (label {r['label']})")
        plots.soft_targets(r["probs"], temperature=r["temperature"], log=r["log_scale"],
                           true_label=r["label"], ax=a2)
        a1.set_box_aspect(1)
        return fig


class DarkKnowledgeMap(Panel):
    """Class-similarity matrix from the teacher's averaged soft targets at T."""

    description = "Dark-knowledge map: which digits does the teacher think look alike?"

    def __init__(self, teacher_logits, labels, *, temperature: float = 4.0, top: int = 5):
        super().__init__()
        self.logits, self.labels, self.top = teacher_logits, labels, top
        _check_temperature(temperature, 0.5, 30)
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=math.log10(0.5),
                                            max=math.log10(30), step=0.01, description="T",
                                            continuous_update=False, readout_format=".2f")
        self.controls = [self.temperature]
        self._watch(self.temperature)
        self.refresh()

    def compute(self):
        t = float(self.temperature.value)
        matrix = metrics.class_similarity(self.logits, self.labels, t)
        return {"temperature": t, "matrix": matrix, "pairs": metrics.confusable_pairs(matrix, self.top)}

    def text(self):
        pairs = " &nbsp; ".join(_span("pair", f"{a}-{b}") + f" ({s:.3f})" for a, b, s in self.result["pairs"])
        t = self.result["temperature"]
        return f"T = {_span('temperature', f'{t:.2f}')} &nbsp; most confusable: {pairs}"

    def figure(self):
        return plots.similarity_matrix(self.result["matrix"], temperature=self.result["temperature"])


class DistillationPlayground(Panel):
    """Distill a tiny MLP at the chosen T and alpha; each run adds a point to the plot."""

    description = "Distillation playground: choose T and alpha, then Train"

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
        self.button = W.Button(description="Train", button_style="primary", icon="play",
                               tooltip="distill a student at these settings")
        self.button.on_click(lambda _b: self.train())
        self.controls = [self.temperature, self.alpha, self.button]
        self.runs: list[dict] = []
        self.scratch_errors: int | None = None
        self.last_student = None
        self._pending = None
        self.refresh()

    def distill_config(self, temperature: float, alpha: float) -> train.DistillConfig:
        return train.DistillConfig(epochs=self.epochs, lr=self.lr, max_shift=0, seed=self.seed,
                                   temperature=temperature, alpha=alpha)

    def train(self):
        """Train the scratch baseline (once) and a student at the sliders' T and alpha."""
        self._run_with((float(self.temperature.value), float(self.alpha.value)))

    def compute(self):
        if self._pending is not None:
            t, a = self._pending
            test_x, test_y = self.test_set.tensors
            if self.scratch_errors is None:
                config.seed_everything(self.seed)
                scratch = models.mlp(self.hidden)
                train.fit(scratch, self.train_set, self.distill_config(t, 1.0), desc="scratch")
                self.scratch_errors = metrics.error_count(metrics.predict(scratch, test_x), test_y)
            config.seed_everything(self.seed)
            student = models.mlp(self.hidden)
            train.distill(student, self.teacher_logits, self.train_set, self.distill_config(t, a),
                          desc=f"distill T={t:g} alpha={a:g}")
            self.last_student = student
            errors = metrics.error_count(metrics.predict(student, test_x), test_y)
            self.runs.append({"temperature": t, "alpha": a, "errors": errors})
        return {"runs": list(self.runs), "last": self.runs[-1] if self.runs else None,
                "scratch_errors": self.scratch_errors, "teacher_errors": self.teacher_errors}

    def text(self):
        last = self.result["last"]
        size = "-".join(map(str, self.hidden))
        if last is None:
            return f"Press Train to distill a {size} student ({self.epochs} epochs on {len(self.train_set):,} digits)."
        t, a = last["temperature"], last["alpha"]
        return (f"last run: T = {_span('temperature', f'{t:g}')}, "
                f"alpha = {_span('alpha', f'{a:g}')} → "
                f"{_span('errors', last['errors'])} test errors; the same {size} student from scratch: "
                f"{_span('scratch-errors', self.result['scratch_errors'])}; teacher: {self.teacher_errors}")

    def figure(self):
        return plots.playground(self.runs, scratch_errors=self.scratch_errors,
                                teacher_errors=self.teacher_errors)


class BiasPanel(Panel):
    """Hinton's omitted-class fix: add a bias to one class's logit and watch that class come back."""

    description = "Raise the omitted class's bias"

    def __init__(self, logits, labels, *, cls: int = 3, chosen: float | None = None,
                 grid=None, bias: float = 0.0):
        super().__init__()
        self.logits, self.labels, self.cls, self.chosen = logits, labels, cls, chosen
        self.grid = list(grid) if grid is not None else [x / 4 for x in range(-8, 41)]
        self.curve = [metrics.class_bias_effect(logits, labels, cls, b) for b in self.grid]
        self.bias = W.FloatSlider(value=bias, min=min(self.grid), max=max(self.grid), step=0.25,
                                  description=f"bias of {cls}", continuous_update=False)
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

    def figure(self):
        fig, ax = plots._fig((6, 3))
        pct = [100 * c["class_correct"] / max(c["class_total"], 1) for c in self.curve]
        ax.plot(self.grid, pct, color=plots.STYLE["distilled"][0], label=f"% of test {self.cls}s right")
        ax.set_xlabel(f"bias added to the {self.cls}'s logit"), ax.set_ylabel(f"% of {self.cls}s right")
        ax2 = ax.twinx()
        ax2.plot(self.grid, [c["errors"] for c in self.curve], color=plots.STYLE["scratch"][0],
                 linestyle="--", label="test errors (all digits)")
        ax2.set_ylabel("test errors (all digits)")
        ax.axvline(self.result["bias"], color="black", linewidth=1)
        if self.chosen is not None:
            ax.axvline(self.chosen, color="black", linestyle=":", linewidth=1, label="chosen on validation")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
        return fig


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

    def figure(self):
        if not self.runs:
            return None
        fig, ax = plots._fig((6.5, 3))
        labels = [f"{r['w_soft']:g}/{r['w_mlm']:g}/{r['w_cos']:g}\nT={r['temperature']:g}" for r in self.runs]
        ax.bar(range(len(self.runs)), [r["accuracy"] for r in self.runs], color=plots.STYLE["distilled"][0],
               edgecolor="black", linewidth=0.5)
        ax.axhline(self.teacher_accuracy, color="black", label="teacher")
        ax.set_xticks(range(len(self.runs))), ax.set_xticklabels(labels, fontsize=7)
        ax.set_xlabel("w_soft / w_mlm / w_cos, temperature"), ax.set_ylabel("val masked-token accuracy")
        ax.legend(fontsize=8)
        ax.set_title("your runs", fontsize=10)
        return fig


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

    def figure(self):
        r = self.result
        fig, ax = plots._fig((6.5, 2.8))
        grid = plots._np(ch03.GRID)
        ax.fill_between(grid, plots._np(r["teacher_probs"]), color="0.8", label="teacher p (two modes)")
        ax.plot(grid, plots._np(r["student_probs"]), color=plots.STYLE["distilled"][0], linewidth=2,
                label=f"student q ({r['objective']})")
        ax.set_xlabel("x (the 'vocabulary')"), ax.set_ylabel("probability")
        ax.legend(fontsize=8)
        return fig


class NextTokenExplorer(Panel):
    """Type a prompt: each model's next-token distribution at temperature T, side by side."""

    description = "Next-token explorer: the teacher's and the student's next-token distributions"

    def __init__(self, named_models: dict, tokenizer, *, prompt: str = "ROMEO:\nO, she doth teach the",
                 temperature: float = 1.0, top: int = 8):
        super().__init__()
        if not named_models:
            raise ValueError("give at least one model, e.g. {'teacher': teacher, 'student': student}")
        self.models, self.tok, self.top = dict(named_models), tokenizer, top
        self.prompt = W.Textarea(value=prompt, description="prompt", continuous_update=False,
                                 layout=W.Layout(width="420px", height="60px"))
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=math.log10(0.25), max=1.0,
                                            step=0.01, description="T", continuous_update=False,
                                            readout_format=".2f")
        self.controls = [self.prompt, self.temperature]
        self._watch(*self.controls)
        self.refresh()

    @torch.no_grad()
    def compute(self):
        t = float(self.temperature.value)
        ids = [text.separator_id(self.tok)] + self.tok(self.prompt.value, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])                                              # (1, S)
        logits = {}
        for name, model in self.models.items():
            limit = getattr(model.config, "n_positions", None) or len(ids)
            dev = next(model.parameters()).device
            logits[name] = model(input_ids=x[:, -limit:].to(dev)).logits[:, -1].float().cpu()   # (1, V)
        probs = {name: losses.soften(z, t)[0] for name, z in logits.items()}                   # (V,)
        top = {name: [(self.tok.decode([int(i)]), float(p[i])) for i in p.argsort(descending=True)[:self.top]]
               for name, p in probs.items()}
        names = list(probs)
        kl = None
        if len(names) >= 2:  # KL(first || second): what the student misses of the teacher's distribution
            kl = float(losses.forward_kl(logits[names[1]].double(), logits[names[0]].double(), temperature=t))
        return {"temperature": t, "n_tokens": len(ids) - 1, "probs": probs, "top": top,
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

    def figure(self):
        r = self.result
        fig, axes = plots._fig((3.3 * len(r["top"]), 2.8), ncols=len(r["top"]))
        axes = np.atleast_1d(axes)
        for i, (ax, (name, pairs)) in enumerate(zip(axes, r["top"].items())):
            labels = [repr(tok)[1:-1] or "∅" for tok, _ in pairs][::-1]
            ax.barh(range(len(pairs)), [p for _, p in pairs][::-1], color=plots.style(name, i)["color"])
            ax.set_yticks(range(len(pairs))), ax.set_yticklabels(labels, fontsize=8)
            ax.set_xlim(0, 1), ax.set_title(name, fontsize=10), ax.set_xlabel("probability")
        return fig


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

    def figure(self):
        if not self.runs:
            return None
        xs = [100 * x["noise"] for x in self.runs]
        return plots.lines(xs, {k: [x[k] for x in self.runs] for k in ("generation 0", "generation 1", "ensemble")},
                           xlabel="flipped training labels (%)", ylabel="test errors",
                           title=f"born-again on noisy labels ({len(self.test_set):,} clean test digits)")


class ChainPicker(Panel):
    """Chapter 05: pick a chain of student widths; a short distillation compares teacher ->
    assistant(s) -> student with teacher -> student directly (and the student from scratch).

    ``run(chain)`` does the training (e.g. ``ch05_staged.teaching_assistant`` with a small
    budget bound in) and returns a dict with ``errors`` (``teacher``, ``direct``, ``staged``,
    ``scratch``) and ``assistants``; results are kept per chain, so going back is instant.
    """

    description = "Teaching assistants: pick a chain of widths (teacher → ... → student)"

    def __init__(self, run, chains, *, value=None):
        super().__init__()
        self.run = run
        chains = [tuple(c) for c in chains]
        if not chains or not all(chains):
            raise ValueError(f"chains must list chains of widths, each ending with the student's, e.g. "
                             f"[(10,), (100, 10)]; got {chains!r}")
        value = tuple(value or chains[0])
        if value not in chains:
            raise ValueError(f"value {value!r} is not one of the chains {chains}")
        options = [(" → ".join(["teacher", *(f"{w}-{w}" for w in c)]), c) for c in chains]
        self.chain = W.Dropdown(options=options, value=value, description="chain",
                                style={"description_width": "initial"})
        self.controls = [self.chain]
        self.runs: dict = {}
        self._watch(self.chain)
        self.refresh()

    def compute(self):
        chain = tuple(self.chain.value)
        if chain not in self.runs:
            r = self.run(chain)
            self.runs[chain] = {"errors": dict(r["errors"]), "assistants": list(r["assistants"])}
        return {"chain": chain, **self.runs[chain]}

    def text(self):
        e = self.result["errors"]
        aid = ", ".join(f"{a['width']}-{a['width']}: {a['test_errors']}" for a in self.result["assistants"])
        return (f"student {self.result['chain'][-1]}-{self.result['chain'][-1]}: direct "
                f"{_span('direct', e['direct'])} test errors, through the assistants "
                f"{_span('staged', e['staged'])}, from scratch {_span('scratch', e.get('scratch'))}; "
                f"teacher {e['teacher']}" + (f"; assistants {aid}" if aid else " (no assistant)"))

    def figure(self):
        e = self.result["errors"]
        names = [k for k in ("scratch", "direct", "staged") if k in e]
        return plots.grouped_bars(names, {"test errors": [e[k] for k in names]}, ylabel="test errors",
                                  title=f"teacher: {e['teacher']} errors")


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
