"""Chapter 05: staged distillation and the capacity gap, on MNIST and on the tiny GPT-2 family.

- ``capacity_gap_students``: one teacher, MLP students of several widths, scratch
  vs distilled per width (the *gain* of distillation as a function of size);
- ``capacity_gap_teachers``: one small student, teachers of growing size
  (Mirzadeh et al. 2020: the student's accuracy may rise, then fall);
- ``teaching_assistant``: teacher -> assistant(s) -> student against teacher ->
  student directly (TAKD, Mirzadeh et al. 2020), for a chain of widths;
- ``cascade``: prune by magnitude (``torch.nn.utils.prune``), distill, make the
  pruning permanent, repeat: a family of ever smaller models from one parent;
- ``per_class_gap``: per-class test errors of the smallest student, direct vs staged.

MNIST: every student is an MLP ``784 -> w -> w -> 10`` (two hidden layers of width
``w``), trained with ``train.fit`` / ``train.distill`` on un-jittered images, so
a teacher's logits on the transfer set are computed once and reused. The sweeps and the
chains distil each teacher-student pair at the T of ``b.temperatures`` with the fewest
errors on validation digits (``distill_best_t``), as TAKD tuned T per pair: a T too hot
for a tiny student can make it worse than no teacher at all.

GPT-2 (the book's exercise 5): the shipped teacher ``gpt2-tiny`` (6 layers x 256, 5.8M parameters)
-> a teaching assistant (3 layers x 192, 2.1M) -> chapter 03's student (2 layers x 128, 0.94M),
against the same student distilled from the teacher directly and trained from scratch (TAKD,
Mirzadeh et al. 2020). Why 3 x 192: its parameter count is close to the geometric mean of the
teacher's and the student's (sqrt(5.82M x 0.94M) = 2.34M), halfway on a log scale; that is this
lab's rule of thumb, not TAKD's. Depth and width both sit between the two ends (head size 64).

Every student of one seed starts from the same random weights and sees the same batches
(``train_text``'s batches are seeded by the config's seed), so direct, staged and scratch
differ only in what they learn from. The student's budget is the same in all three; the
assistant's own training is extra cost for the staged student, measured and reported apart.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils import prune

from ..core import checks, config, datasets, metrics, models, text, train, train_text
from ..core.tables import Bullets
from . import ch03_gpt2 as ch03

TAKD_2020 = {  # Mirzadeh et al. 2020 (AAAI), "Improved Knowledge Distillation via Teacher Assistant", Table 1:
    # CIFAR-10, plain CNNs, teacher 10 layers, TA 4, student 2; top-1 test accuracy (%), each the best of the 120
    # hyper-parameter trials (T and the loss weight searched per pair) they ran, scored on the test set
    "student without KD (no KD)": 70.16,
    "direct KD (teacher -> student)": 72.57,
    "TAKD (teacher -> TA -> student)": 73.51,
}


@dataclass
class StagedBudget:
    epochs: int = 10             # per student; Hinton-style runs train far longer
    n_train: int = 50_000        # transfer set: the training split (notebook 05's live runs: 2,000)
    lr: float = 3e-3             # NOTES: a 30-30 student needed 3e-3 to show any KD gain
    batch_size: int = 128
    temperature: float = 4.0     # a fixed T (the widget's default); the sweeps choose T per pair instead
    temperatures: tuple = (1, 2, 4, 8)   # T chosen per pair on validation (TAKD tuned T per pair)
    n_val: int = 5_000           # validation digits that choose T (never the test digits)
    alpha: float = 0.1           # weight of the hard labels
    n_test: int = 10_000         # the official test set (quick mode: a subset)
    student_widths: tuple = (10, 30, 100, 300, 800)   # capacity gap: one teacher, these students
    teacher_widths: tuple = (30, 100, 300, 800)       # capacity gap: these MLP teachers + the shipped CNN
    small_student: int = 10      # the student of the teacher sweep and of the TA chain
    chain: tuple = (100, 10)     # widths after the teacher: assistant(s), then the student
    chains: tuple = ((30, 10), (100, 10), (300, 10), (300, 30, 10))  # the bench compares these
    prune_share: float = 0.5     # cascade: share of the still-nonzero weights zeroed each round
    prune_rounds: int = 5
    prune_scope: str = "global"  # "global" (one threshold for all layers) or "layer"
    cascade_width: int = 300     # the cascade starts from a distilled student of this width


def budget(**overrides) -> StagedBudget:
    """The classroom budget, or a tiny one in quick mode (``KDLAB_QUICK=1``)."""
    base = config.budget(StagedBudget(), StagedBudget(epochs=1, n_train=1_000, n_test=1_000, n_val=500,
                                                      student_widths=(10, 30), teacher_widths=(30,),
                                                      chains=((30, 10),), prune_rounds=2, cascade_width=30))
    return replace(base, **overrides)


LIVE_WIDTHS = (10, 30, 100)   # notebook 05's live capacity sweep


def live_budget() -> StagedBudget:
    """Notebook 05's live runs: notebook 00's small budget, 2,000 labelled digits and 20 epochs (quick mode:
    the quick budget), so that a student trains in seconds."""
    return budget(**config.budget({"n_train": 2_000, "epochs": 20}, {}))


def live_check(teacher, seeds=range(5), progress: bool = False) -> dict:
    """Notebook 05's live sweep (``live_budget``, ``LIVE_WIDTHS``) over ``seeds``: per seed, each width's scratch
    and per-T test errors and the T validation chose; and on how many seeds the hottest T made the smallest
    student worse than scratch, and distillation at the chosen T beat scratch, per width."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must list at least one seed, e.g. range(5)")
    b = live_budget()
    targets = metrics.predict(teacher, transfer_set(b))
    runs = [capacity_gap_students(teacher, b, LIVE_WIDTHS, (s,), targets, progress) for s in seeds]
    rows = [{"seed": s, **{k: r[k] for k in ("scratch", "temperature", "by_temperature")}} for s, r in zip(seeds, runs)]
    small, hot = str(LIVE_WIDTHS[0]), f"{max(b.temperatures):g}"
    return {"budget": {"n_train": b.n_train, "epochs": b.epochs, "temperatures": list(b.temperatures)},
            "widths": list(LIVE_WIDTHS), "seeds": seeds, "per_seed": rows,
            "hot_hurts_smallest": sum(r["by_temperature"][small][hot] > r["scratch"][small][0] for r in rows),
            "distilled_wins": {str(w): sum(r["by_temperature"][str(w)][f"{r['temperature'][str(w)]:g}"]
                                           < r["scratch"][str(w)][0] for r in rows) for w in LIVE_WIDTHS}}


def live_check_verdict(check: dict) -> Bullets:
    """What the five-seed check of the live sweep found, one line per finding."""
    n, w0, hot = len(check["seeds"]), check["widths"][0], max(check["budget"]["temperatures"])
    wins = ", ".join(f"{w}-{w} on {k} of {n}" for w, k in check["distilled_wins"].items())
    return Bullets("\n".join([
        f"on {check['hot_hurts_smallest']} of {n} seeds the {w0}-{w0} student distilled at T = {hot:g} made more "
        f"test errors than from scratch ({check['command']})",
        f"at the T validation chose, distillation beat scratch: {wins}"]))


def transfer_set(b: StagedBudget):
    return datasets.take(datasets.load_mnist("train"), b.n_train, seed=0)


def test_set(b: StagedBudget):
    return datasets.take(datasets.load_mnist("test"), b.n_test, seed=0)


def val_set(b: StagedBudget):
    """The digits that choose a temperature: the validation split, never the test digits."""
    return datasets.take(datasets.load_mnist("val"), b.n_val, seed=0)


def student(width: int) -> nn.Sequential:
    """The chapter's student: ``784 -> width -> width -> 10``."""
    return models.mlp((int(width), int(width)))


def _cfg(b: StagedBudget, seed: int, temperature: float | None = None) -> train.DistillConfig:
    return train.DistillConfig(epochs=b.epochs, lr=b.lr, batch_size=b.batch_size, max_shift=0, seed=seed,
                               temperature=b.temperature if temperature is None else temperature, alpha=b.alpha)


def train_student(width: int, data, b: StagedBudget, seed: int = 0, teacher=None, progress: bool = False,
                  model: nn.Module | None = None, temperature: float | None = None) -> nn.Module:
    """A ``width`` student trained on hard labels (``teacher=None``) or distilled from ``teacher``
    (a model or its logits on ``data``) at ``temperature`` (default ``b.temperature``). ``model``
    continues training that model instead."""
    config.seed_everything(seed)
    m = model if model is not None else student(width)
    cfg = _cfg(b, seed, temperature)
    if teacher is None:
        train.fit(m, data, cfg, progress=progress, desc=f"scratch {width}")
    else:
        train.distill(m, teacher, data, cfg, progress=progress, desc=f"distill {width} T={cfg.temperature:g}")
    return m


def distill_best_t(width: int, teacher, data, val, b: StagedBudget, seed: int = 0, temperatures=None,
                   progress: bool = False) -> dict:
    """A ``width`` student distilled from ``teacher`` (a model or its logits on ``data``) at each of
    ``temperatures`` (default ``b.temperatures``), the same seed for each; the one with the fewest errors
    on the validation digits ``val`` is kept (ties: the lower T).

    Returns ``{"model", "temperature", "val_errors": {T: errors}, "models": {T: model}}``."""
    temps = sorted(float(t) for t in (b.temperatures if temperatures is None else temperatures))
    if not temps or any(not t > 0 for t in temps):
        raise ValueError(f"temperatures must list positive numbers, e.g. (1, 2, 4); got {temperatures!r}")
    models_ = {t: train_student(width, data, b, seed, teacher, progress, temperature=t) for t in temps}
    val_errors = {t: errors(m, val) for t, m in models_.items()}
    best = min(temps, key=lambda t: (val_errors[t], t))
    return {"model": models_[best], "temperature": best, "val_errors": val_errors, "models": models_}


def errors(model, test) -> int:
    return metrics.error_count(metrics.predict(model, test), test.tensors[1])


def _targets(teacher, data):
    return teacher if isinstance(teacher, torch.Tensor) else metrics.predict(teacher, data)


# ------------------------------------------------------------------ capacity gap

def _widths(widths, what: str) -> list[int]:
    """``widths`` as a list of positive ints, or a ValueError naming ``what`` and the problem."""
    try:
        out = [int(w) for w in widths]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must list hidden widths (whole numbers), e.g. (100, 10); got {widths!r}") from None
    if not out:
        raise ValueError(f"{what} must list at least one width, e.g. (100, 10)")
    if any(w < 1 or w != x for w, x in zip(out, widths)):
        raise ValueError(f"{what} must list positive whole-number widths, e.g. (100, 10); got {widths!r}")
    return out


def capacity_gap_students(teacher, b: StagedBudget, widths=None, seeds=(0,), targets=None,
                          progress: bool = False) -> dict:
    """One teacher, students of several widths: test errors of scratch and distilled per width, each
    width's T chosen on the validation digits with the first seed (``distill_best_t``), then used for
    every seed.

    Returns ``{"widths", "params", "teacher_errors", "scratch": {w: [errors per seed]},
    "distilled": {w: [...]}, "gain": {w: mean scratch - mean distilled}, "temperature": {w: T chosen},
    "by_temperature": {w: {T: test errors of the first seed's student at T}}, "val_errors": {w: {T: ...}}}``
    (keys are the widths as strings, as in a JSON file).
    """
    widths = _widths(b.student_widths if widths is None else widths, "widths")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must list at least one seed, e.g. (0,)")
    data, test, val = transfer_set(b), test_set(b), val_set(b)
    targets = _targets(teacher if targets is None else targets, data)
    out = {"widths": widths, "params": {}, "teacher_errors": errors(teacher, test), "scratch": {}, "distilled": {},
           "gain": {}, "temperature": {}, "by_temperature": {}, "val_errors": {}, "seeds": seeds}
    for w in widths:
        k = str(w)
        out["params"][k] = models.n_params(student(w))
        out["scratch"][k] = [errors(train_student(w, data, b, s, None, progress), test) for s in seeds]
        pick = distill_best_t(w, targets, data, val, b, seeds[0], progress=progress)
        t = out["temperature"][k] = pick["temperature"]
        out["by_temperature"][k] = {f"{tt:g}": errors(m, test) for tt, m in pick["models"].items()}
        out["val_errors"][k] = {f"{tt:g}": e for tt, e in pick["val_errors"].items()}
        out["distilled"][k] = [out["by_temperature"][k][f"{t:g}"]] + [
            errors(train_student(w, data, b, s, targets, progress, temperature=t), test) for s in seeds[1:]]
        out["gain"][k] = _mean(out["scratch"][k]) - _mean(out["distilled"][k])
    return out


def capacity_gap_teachers(b: StagedBudget, widths=None, *, student_width: int | None = None, seeds=(0,),
                          extra_teachers: dict | None = None, progress: bool = False) -> dict:
    """One small student, teachers of growing size: MLP teachers of ``widths`` trained on hard
    labels (seed 0, same budget), plus ``extra_teachers`` (name -> model, e.g. the shipped CNN). Each
    teacher's T for the student is chosen on the validation digits with the first seed.

    Returns ``{"student_width", "teachers": [{"name", "params", "test_errors", "temperature",
    "by_temperature": {T: the first seed's student's test errors}}], "student": {name: [errors per seed]},
    "scratch": [errors per seed]}``, teachers in order of size.
    """
    widths = list(widths or b.teacher_widths)
    sw = int(student_width or b.small_student)
    seeds = list(seeds)
    data, test, val = transfer_set(b), test_set(b), val_set(b)
    teachers = {f"MLP {w}-{w}": train_student(w, data, b, 0, None, progress) for w in widths}
    teachers.update(extra_teachers or {})
    rows, student_errors = [], {}
    for name, t in sorted(teachers.items(), key=lambda kv: models.n_params(kv[1])):
        tl = metrics.predict(t, data)
        pick = distill_best_t(sw, tl, data, val, b, seeds[0], progress=progress)
        by_t = {f"{tt:g}": errors(m, test) for tt, m in pick["models"].items()}
        rows.append({"name": name, "params": models.n_params(t), "test_errors": errors(t, test),
                     "temperature": pick["temperature"], "by_temperature": by_t})
        student_errors[name] = [by_t[f"{pick['temperature']:g}"]] + [
            errors(train_student(sw, data, b, s, tl, progress, temperature=pick["temperature"]), test)
            for s in seeds[1:]]
    return {"student_width": sw, "teachers": rows, "student": student_errors, "seeds": seeds,
            "scratch": [errors(train_student(sw, data, b, s, None, progress), test) for s in seeds]}


# ------------------------------------------------------------------ teaching assistants

def _distill(width, target, data, b, seed, progress, temperature, val):
    """One link of a chain: at a fixed ``temperature``, or (``temperature=None``) at the T of
    ``b.temperatures`` with the fewest validation errors: ``(model, T)``."""
    if temperature is not None:
        return train_student(width, data, b, seed, target, progress, temperature=temperature), float(temperature)
    pick = distill_best_t(width, target, data, val, b, seed, progress=progress)
    return pick["model"], pick["temperature"]


def distill_chain(teacher_targets: torch.Tensor, widths, data, b: StagedBudget, seed: int = 0,
                  progress: bool = False, temperature: float | None = None) -> dict:
    """Distill ``widths[0]`` from the teacher's logits, ``widths[1]`` from ``widths[0]``'s logits,
    and so on: each stage learns from the stage before it, never from the teacher directly. Each
    link at ``temperature``, or with ``temperature=None`` at its own T chosen on the validation digits.

    Returns ``{"models": [...], "targets": [...], "temperatures": [...]}``: ``targets[i]`` is what stage
    ``i`` matched, ``temperatures[i]`` at which T.
    """
    widths = _widths(widths, "widths")
    val = val_set(b) if temperature is None else None
    target, chain, used, temps = teacher_targets, [], [], []
    for w in widths:
        m, t = _distill(w, target, data, b, seed, progress, temperature, val)
        used.append(target)
        chain.append(m)
        temps.append(t)
        target = metrics.predict(m, data)   # the next stage matches this assistant's outputs
    return {"models": chain, "targets": used, "temperatures": temps}


def teaching_assistant(teacher, b: StagedBudget, chain=None, seed: int = 0, targets=None,
                       progress: bool = False, with_scratch: bool = True, temperature: float | None = None) -> dict:
    """TAKD: ``teacher -> chain[0] -> ... -> chain[-1]`` against ``teacher -> chain[-1]`` directly.

    ``chain`` lists the widths after the teacher, e.g. ``(100, 10)``: one assistant of width 100,
    then the 10-10 student. Every link (and the direct student) at ``temperature``, or with
    ``temperature=None`` at its own T of ``b.temperatures`` chosen on the validation digits, as TAKD
    tuned T per pair. Returns errors of the teacher, each assistant, the staged and the direct student
    (and the student from scratch), the temperatures used, and their test logits for a gap analysis.
    """
    chain = _widths(b.chain if chain is None else chain, "chain")
    data, test = transfer_set(b), test_set(b)
    start = time.perf_counter()
    t_targets = _targets(teacher if targets is None else targets, data)
    staged = distill_chain(t_targets, chain, data, b, seed, progress, temperature)
    direct, t_direct = _distill(chain[-1], t_targets, data, b, seed, progress, temperature,
                                val_set(b) if temperature is None else None)
    named = {"teacher": teacher, "direct": direct, "staged": staged["models"][-1]}
    if with_scratch:
        named["scratch"] = train_student(chain[-1], data, b, seed, None, progress)
    logits = {k: metrics.predict(m, test) for k, m in named.items()}
    errs = {k: metrics.error_count(v, test.tensors[1]) for k, v in logits.items()}
    return {"chain": chain, "seed": seed, "errors": errs,
            "temperatures": {"direct": t_direct, "chain": staged["temperatures"]},
            "assistants": [{"width": w, "test_errors": errors(m, test)}
                           for w, m in zip(chain[:-1], staged["models"][:-1])],
            "logits": logits, "labels": test.tensors[1], "models": {**named, "chain": staged["models"]},
            "seconds": time.perf_counter() - start}


# ------------------------------------------- the book's exercise 5: one step or two, run by the reader

EXERCISE_ASSISTANTS = (30, 100, 300)   # the assistant widths notebook 05's exercise offers its 10-10 student


def model_maker(width: int, seed: int = 0):
    """``make()`` -> a fresh ``student(width)``, seeded ``seed`` on every call, so two models of one width
    start from the same weights (as ``train_student`` starts them). Each carries ``kd_start = (width, seed)``."""
    width = _widths((width,), "width")[0]

    def make():
        config.seed_everything(seed)
        model = student(width)
        model.kd_start = (width, seed)
        return model
    return make


def distiller(b: StagedBudget, data, temperature: float, seed: int = 0, progress: bool = False):
    """``distill(model, teacher)`` for notebook 05's chain: ``b.epochs`` epochs of ``alpha·CE + (1-alpha)·T²·KL``
    at ``temperature`` on ``teacher``'s logits on ``data``, the batches of ``seed`` (as ``train_student`` draws
    them, so ``distill(model_maker(w, s)(), t)`` is ``train_student(w, data, b, s, t, temperature=T)``). The
    model comes back in eval mode, stamped with a ``kd_record`` (its teacher, T, epochs, digits, start) that
    ``exercises.check_staging`` reads to check the design."""
    checks.temperature(temperature)

    def distill(model, teacher):
        targets = metrics.predict(teacher, data)                                       # (N, 10)
        cfg = _cfg(b, seed, float(temperature))
        train.distill(model, targets, data, cfg, progress=progress, desc=f"distill T={cfg.temperature:g}")
        model.kd_record = {"teacher": teacher, "temperature": cfg.temperature, "epochs": b.epochs,
                           "n_train": len(data), "seed": seed, "start": getattr(model, "kd_start", None)}
        return model.eval()
    return distill


def chain_loop(teacher, make_assistant, make_student, distill) -> tuple:
    """The chain of notebook 05's exercise 1 (what ``exercises.check_chain`` asks for)::

        assistant = make_assistant();  distill(assistant, teacher)
        student = make_student();      distill(student, assistant)     # never sees the teacher
    """
    assistant = make_assistant()
    distill(assistant, teacher)
    student = make_student()
    distill(student, assistant)
    return assistant, student


def staging_check(teacher, seeds=range(5), temperatures=None, assistants=EXERCISE_ASSISTANTS,
                  progress: bool = False) -> dict:
    """Notebook 05's exercise 5 over ``seeds``, at its budget (``live_budget``): per seed and T of
    ``temperatures`` (default ``b.temperatures``), the 10-10 student distilled from the teacher directly, and
    through each assistant width of ``assistants``. A seed's students share their start and batches.

    Returns ``{"per_seed": [{"seed", "temperature", "direct", "assistant": {w: errors}, "staged": {w: errors}}],
    "summary": {T: {"direct": mean_std, "staged": {w: mean_std}, "staged_wins": {w: seeds where staged <
    direct}}}}`` (test errors on ``test_set``)."""
    seeds, b = list(seeds), live_budget()
    if not seeds:
        raise ValueError("seeds must list at least one seed, e.g. range(5)")
    temps = [float(t) for t in (b.temperatures if temperatures is None else temperatures)]
    widths = _widths(assistants, "assistants")
    data, test = transfer_set(b), test_set(b)
    targets = metrics.predict(teacher, data)                                           # (n_train, 10)
    rows = []
    for s in seeds:
        for t in temps:
            row = {"seed": s, "temperature": t, "assistant": {}, "staged": {},
                   "direct": errors(train_student(b.small_student, data, b, s, targets, progress, temperature=t), test)}
            for w in widths:
                a = train_student(w, data, b, s, targets, progress, temperature=t)
                staged = train_student(b.small_student, data, b, s, metrics.predict(a, data), progress, temperature=t)
                row["assistant"][str(w)], row["staged"][str(w)] = errors(a, test), errors(staged, test)
            rows.append(row)
    summary = {}
    for t in temps:
        mine = [r for r in rows if r["temperature"] == t]
        summary[f"{t:g}"] = {"direct": metrics.mean_std([r["direct"] for r in mine]),
                             "staged": {str(w): metrics.mean_std([r["staged"][str(w)] for r in mine]) for w in widths},
                             "staged_wins": {str(w): sum(r["staged"][str(w)] < r["direct"] for r in mine)
                                             for w in widths}}
    return {"budget": {"n_train": b.n_train, "epochs": b.epochs, "alpha": b.alpha, "student": b.small_student},
            "seeds": seeds, "temperatures": temps, "assistants": widths, "per_seed": rows, "summary": summary}


def staging_series(check: dict) -> dict:
    """``staging_check``'s paired gain of the second step per T (x) for ``plots.lines``: for each assistant width,
    ``[[one-step errors - two-step errors, per seed] per T]`` (positive: two steps made fewer test errors)."""
    rows = lambda t: [r for r in check["per_seed"] if r["temperature"] == t]
    temps = check["temperatures"]
    return {f"two steps via {w}-{w}": [[r["direct"] - r["staged"][str(w)] for r in rows(t)] for t in temps]
            for w in check["assistants"]}


def staging_verdict(check: dict) -> Bullets:
    """Per T of ``staging_check``: on how many seeds each chain beat the one-step student, and the means."""
    n, lines = len(check["seeds"]), []
    for t, row in check["summary"].items():
        wins = ", ".join(f"via {w}-{w} on {k} of {n} ({row['staged'][w]['mean']:.1f})"
                         for w, k in row["staged_wins"].items())
        lines.append(f"T = {t}: one step made {row['direct']['mean']:.1f} test errors (mean); two steps beat it {wins}")
    return Bullets("\n".join(lines))


def per_class_gap(logits: dict, labels: torch.Tensor) -> dict:
    """Per-class test errors of each model in ``logits`` (name -> (N, C)), as lists of ints."""
    return {name: metrics.per_class_errors(l, labels).tolist() for name, l in logits.items()}


# ------------------------------------------------------------------ cascade (prune + distill)

def _prunable(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _weight(m: nn.Linear) -> torch.Tensor:
    return m.weight.detach()   # with a pruning mask attached this is weight_orig * mask


def prune_by_magnitude(model: nn.Module, share: float, scope: str = "global") -> nn.Module:
    """Zero ``share`` of the still-nonzero Linear weights with the smallest magnitude, in place.

    ``scope="global"``: one threshold over all layers (``prune.global_unstructured``);
    ``scope="layer"``: ``share`` of each layer (``prune.l1_unstructured``). Weights already zero
    count as pruned and stay zero. The masks stay attached (``weight = weight_orig * mask``), so a
    distillation round cannot revive them; ``make_permanent`` removes the re-parametrisation.
    Biases are not pruned.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be in [0, 1), got {share}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = _prunable(model)
    if scope == "global":
        ws = [_weight(m) for m in layers]
        zero = sum(int((w == 0).sum()) for w in ws)
        nonzero = sum(w.numel() for w in ws) - zero
        amount = zero + round(share * nonzero)
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured,
                                  amount=amount)
    else:
        for m in layers:
            w = _weight(m)
            zero = int((w == 0).sum())
            prune.l1_unstructured(m, "weight", amount=zero + round(share * (w.numel() - zero)))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """``prune.remove`` on every pruned layer: the zeros become plain zeros in ``weight``."""
    for m in _prunable(model):
        if prune.is_pruned(m) and hasattr(m, "weight_orig"):
            prune.remove(m, "weight")
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Share of the Linear weights that are exactly zero."""
    ws = [_weight(m) for m in _prunable(model)]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def nonzero_params(model: nn.Module) -> int:
    """Parameters (Linear weights and biases) that are not exactly zero."""
    return sum(int((_weight(m) != 0).sum()) + (int((m.bias.detach() != 0).sum()) if m.bias is not None else 0)
               for m in _prunable(model))


PRUNE_SHARES = tuple(round(0.05 * k, 2) for k in range(20))   # 0%, 5%, ..., 95%: notebook 05's prune explorer


def pruned_copy(model: nn.Module, share: float, scope: str = "global") -> nn.Module:
    """A copy of ``model`` with ``share`` of its Linear weights zeroed by magnitude, made permanent; ``model``
    itself is untouched."""
    return make_permanent(prune_by_magnitude(copy.deepcopy(model), share, scope))


def prune_curve(model: nn.Module, test, shares=PRUNE_SHARES, scope: str = "global") -> list[dict]:
    """Pruning without retraining: for each share of ``shares``, the test errors of ``pruned_copy``, its nonzero
    parameters and the share of zeros in each Linear layer, ``[{"share", "nonzero", "test_errors",
    "layer_zero"}]``."""
    rows = []
    for share in shares:
        m = pruned_copy(model, float(share), scope)
        rows.append({"share": float(share), "nonzero": nonzero_params(m), "test_errors": errors(m, test),
                     "layer_zero": [float((_weight(x) == 0).float().mean()) for x in _prunable(m)]})
    return rows


def cascade(parent, start: nn.Module, b: StagedBudget, *, share: float | None = None,
            rounds: int | None = None, scope: str | None = None, teach: str = "parent",
            seed: int = 0, targets=None, progress: bool = False) -> dict:
    """Cascade distillation: prune ``start`` by magnitude, distill it, make the pruning permanent,
    and repeat ``rounds`` times; each round starts from the model the last one made.

    ``teach="parent"``: every round matches the one parent (the teacher), as in cascade
    distillation; ``teach="previous"``: each round matches the model before it was pruned.
    Returns ``{"rows": [{"round", "nonzero", "sparsity", "test_errors"}], "models": [...]}``,
    round 0 being ``start`` itself (it is not modified).
    """
    share = b.prune_share if share is None else share
    rounds = b.prune_rounds if rounds is None else rounds
    scope = scope or b.prune_scope
    if teach not in ("parent", "previous"):
        raise ValueError(f"teach must be 'parent' or 'previous', got {teach!r}")
    if not 0.0 < share < 1.0:
        raise ValueError(f"share (of the nonzero weights pruned per round) must be in (0, 1), got {share}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a whole number >= 1, got {rounds!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    data, test = transfer_set(b), test_set(b)
    parent_targets = _targets(parent if targets is None else targets, data)
    model = copy.deepcopy(start)
    family = [copy.deepcopy(model)]
    rows = [{"round": 0, "nonzero": nonzero_params(model), "sparsity": weight_sparsity(model),
             "test_errors": errors(model, test)}]
    for r in range(1, rounds + 1):
        target = parent_targets if teach == "parent" else metrics.predict(model, data)
        prune_by_magnitude(model, share, scope)
        train_student(0, data, b, seed, target, progress, model=model)   # masked: pruned weights stay 0
        make_permanent(model)
        family.append(copy.deepcopy(model))
        rows.append({"round": r, "nonzero": nonzero_params(model), "sparsity": weight_sparsity(model),
                     "test_errors": errors(model, test)})
    return {"rows": rows, "models": family, "share": share, "scope": scope, "teach": teach}


def _mean(values) -> float:
    return float(statistics.mean(values))


def compare_verdict(name: str, values, reference: str, ref_values, *, unit: str = "test errors") -> str:
    """One sentence: is ``name``'s mean ``unit`` (lower is better: test errors, perplexity) below
    ``reference``'s by more than the noise (chapter 01's rule: two standard deviations of the noisier of
    the two over seeds)? With one seed on either side there is no spread to compare with, and it says so."""
    a, b = metrics.mean_std(values), metrics.mean_std(ref_values)
    m, r = a["mean"], b["mean"]
    if len(values) < 2 or len(ref_values) < 2:
        how = "(one seed: no spread to compare with)"
    else:
        band = metrics.noise_band(a, b)
        how = (f"more than two standard deviations over seeds ({band:.1f})" if metrics.beyond_noise(a, b) else
               f"within two standard deviations over seeds ({band:.1f}): not a measured difference")
    word = "lower" if m < r else "higher"
    return Bullets(f"{name}: {unit} {m:.1f} against {r:.1f} for {reference}, {abs(r - m):.1f} {word}, {how}")


def temperature_rows(sweep: dict) -> list[list]:
    """A capacity sweep (``capacity_gap_students``) per width: ``[width, scratch (first seed), distilled at each T
    (first seed)..., T chosen on validation, gain (mean scratch - mean distilled at that T)]``."""
    return [[w, sweep["scratch"][str(w)][0], *sweep["by_temperature"][str(w)].values(),
             sweep["temperature"][str(w)], sweep["gain"][str(w)]] for w in sweep["widths"]]


def temperature_gains(sweep: dict) -> dict:
    """Per width, what distillation at each T changed against scratch (first seed; positive = fewer test
    errors): ``{"width 10": [gain at T1, gain at T2, ...]}``, for a plot over T."""
    return {f"width {w}": [sweep["scratch"][str(w)][0] - e for e in sweep["by_temperature"][str(w)].values()]
            for w in sweep["widths"]}


def temperature_verdict(sweep: dict) -> Bullets:
    """One line per width: the T validation chose, what the hottest T did against scratch, and the gain at the
    chosen T (first seed; the bench's seeds for the gain)."""
    lines = []
    for w in sweep["widths"]:
        k = str(w)
        by_t, scratch = sweep["by_temperature"][k], sweep["scratch"][k][0]
        hot = max(by_t, key=float)
        d_hot = by_t[hot] - scratch
        gain, n = sweep["gain"][k], len(sweep["scratch"][k])
        lines.append(f"validation chose T = {sweep['temperature'][k]:g} for the {w}-{w} student; at T = {hot} it made "
                     f"{abs(d_hot):,} {'more' if d_hot > 0 else 'fewer'} test errors than from scratch; at the chosen "
                     f"T distillation {'saved' if gain > 0 else 'cost'} {abs(gain):,.1f} errors "
                     f"({'mean of ' + str(n) + ' seeds' if n > 1 else 'one seed'})")
    return Bullets("\n".join(lines))


def cascade_vs_dense(cascade_rows, students: dict) -> list[list]:
    """For each cascade model, the dense distilled student of the capacity sweep with the nearest
    parameter count: rows ``[round, nonzero params, errors, nearest dense width, its params, its errors]``."""
    dense = [(int(w), students["params"][str(w)], _mean(students["distilled"][str(w)])) for w in students["widths"]]
    rows = []
    for r in cascade_rows:
        w, p, e = min(dense, key=lambda d: abs(d[1] - r["nonzero"]))
        rows.append([r["round"], r["nonzero"], r["test_errors"], f"{w}-{w}", p, e])
    return rows


# ------------------------------------------------------ the GPT-2 family (exercise 5)

@dataclass
class ChainBudget:
    student_steps: int = 150       # each 2 x 128 student (scratch, direct, staged); chapter 03's bench: 300
    assistant_steps: int = 300     # the assistant, distilled from the teacher (its cost is reported apart)
    assistant_layers: int = 3      # between the teacher's 6 and the student's 2
    assistant_hidden: int = 192    # between 256 and 128; 2.1M parameters, near the geometric mean
    assistant_heads: int = 3       # head size 64, as in the teacher (256 / 4) and the student (128 / 2)


def gpt2_budget(**overrides) -> ChainBudget:
    """The bench budget, or a tiny one in quick mode (``KDLAB_QUICK=1``)."""
    quick = ChainBudget(student_steps=2, assistant_steps=2, assistant_layers=2, assistant_hidden=48,
                        assistant_heads=3)
    return replace(config.budget(ChainBudget(), quick), **overrides)


def gpt2_student_budget(cb: ChainBudget) -> ch03.GptBudget:
    """The 2 x 128 student's ``GptBudget`` (chapter 03's, with ``cb.student_steps`` steps)."""
    return ch03.budget(steps=cb.student_steps)


def gpt2_assistant_budget(cb: ChainBudget) -> ch03.GptBudget:
    """The assistant's ``GptBudget``: the student's data, batch and learning rate, its own size and steps."""
    return replace(gpt2_student_budget(cb), layers=cb.assistant_layers, hidden=cb.assistant_hidden,
                   heads=cb.assistant_heads, steps=cb.assistant_steps)


def gpt2_distill_chain(teacher, budgets, train_blocks: torch.Tensor, seed: int = 0, progress: bool = False) -> list:
    """Distill a chain of GPT-2 students: ``budgets[0]``'s model from ``teacher``, ``budgets[1]``'s
    from that model, and so on, each with ``train_text.distill_clm`` (token-level forward KL). Each
    stage learns from the stage before it, never from the teacher directly. Returns the models."""
    if not budgets:
        raise ValueError("budgets must list at least one stage (the student's GptBudget)")
    previous, chain = teacher, []
    for i, b in enumerate(budgets):
        model = ch03.new_student_like(teacher, b, seed)
        train_text.distill_clm(model, previous, train_blocks, ch03.token_config(b, seed), progress=progress,
                               desc=f"stage {i + 1} ({b.layers}x{b.hidden})")
        chain.append(model.eval())
        previous = model   # the next stage matches this model's next-token distributions
    return chain


def gpt2_teaching_assistant(teacher, train_blocks: torch.Tensor, val_blocks: torch.Tensor, cb: ChainBudget,
                       seed: int = 0, *, ranks: torch.Tensor | None = None, teacher_nll: dict | None = None,
                       progress: bool = False) -> dict:
    """teacher -> assistant -> student against teacher -> student and the student from scratch, one seed.

    Returns ``{"perplexity": {name: ...}, "seconds": {name: training seconds}, "frequency_gap": rows,
    "models": {...}}`` for names teacher, assistant, direct, staged, scratch; the frequency-gap rows
    (``ch03_gpt2.frequency_gap``: mean next-token loss per bucket of the target token's
    frequency rank) need ``ranks`` (``text.token_ranks`` of the training blocks).
    """
    sb, ab = gpt2_student_budget(cb), gpt2_assistant_budget(cb)
    seconds = {}
    start = time.perf_counter()
    scratch = ch03.new_student_like(teacher, sb, seed)
    train_text.fit_clm(scratch, train_blocks, ch03.token_config(sb, seed), progress=progress, desc="scratch")
    seconds["scratch"] = time.perf_counter() - start
    start = time.perf_counter()
    (direct,) = gpt2_distill_chain(teacher, [sb], train_blocks, seed, progress)
    seconds["direct"] = time.perf_counter() - start
    start = time.perf_counter()
    (assistant,) = gpt2_distill_chain(teacher, [ab], train_blocks, seed, progress)
    seconds["assistant"] = time.perf_counter() - start
    start = time.perf_counter()
    (staged,) = gpt2_distill_chain(assistant, [sb], train_blocks, seed, progress)   # it sees only the assistant
    seconds["staged"] = time.perf_counter() - start
    named = {"teacher": teacher, "assistant": assistant, "direct": direct, "staged": staged, "scratch": scratch.eval()}
    scored = {name: (teacher_nll if name == "teacher" and teacher_nll is not None else metrics.token_nll(m, val_blocks))
              for name, m in named.items()}
    out = {"seed": seed, "perplexity": {name: math.exp(float(s["nll"].mean())) for name, s in scored.items()},
           "seconds": seconds, "models": named}
    if ranks is not None:
        out["frequency_gap"] = ch03.frequency_gap(scored, ranks)
    return out


def gpt2_data(b: ch03.GptBudget | None = None) -> tuple:
    """``(teacher, tokenizer, train blocks, val blocks, token frequency ranks of the train blocks)``."""
    teacher, tok = ch03.load()
    b = b or gpt2_student_budget(gpt2_budget())
    train_blocks, val_blocks = ch03.shakespeare_blocks(tok, "train", b), ch03.shakespeare_blocks(tok, "val", b)
    return teacher, tok, train_blocks, val_blocks, text.token_ranks(train_blocks, teacher.config.vocab_size)


def gpt2_params(cb: ChainBudget, teacher) -> dict:
    """Parameter counts of teacher, assistant and student."""
    return {"teacher": models.n_params(teacher),
            "assistant": models.n_params(ch03.new_student_like(teacher, gpt2_assistant_budget(cb))),
            "student": models.n_params(ch03.new_student_like(teacher, gpt2_student_budget(cb)))}
