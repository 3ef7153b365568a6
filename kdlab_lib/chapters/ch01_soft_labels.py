"""Chapter 01 (MNIST soft labels), shared by the notebook and ``kdlab bench mnist``.

Chapter 01: teacher vs scratch vs distilled student at one budget,
temperature and alpha sweeps, and Hinton's "omit the 3s" transfer-set
experiment. Every function trains with ``train`` and measures with
``metrics``; sizes come from an ``MnistBudget`` (classroom or quick).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch

from ..core import config, datasets, metrics, models, train
from ..core.tables import Bullets

HINTON_2015 = {  # Hinton, Vinyals & Dean 2015 (arXiv:1503.02531v1), section 3, p. 4 (MNIST); test errors of 10,000
    "teacher (1200-1200, dropout, jitter)": 67,
    "small net from scratch (800-800)": 146,
    "distilled small net (800-800, T = 20)": 74,
    "omit 3s: distilled, before the bias fix": 206,          # "of which 133 are on the 1010 threes"
    "omit 3s: share of test 3s right before the fix": 877 / 1010,
    "omit 3s: after raising the 3's bias by 3.5": 109,
    "omit 3s: share of test 3s right after the fix": 0.986,
}


@dataclass
class MnistBudget:
    hidden: tuple = (800, 800)   # Hinton's small net
    epochs: int = 20             # Hinton trained far longer (no number given)
    n_train: int = 50_000        # transfer set = the training split (Hinton: the untranslated training set)
    lr: float = 1e-3
    batch_size: int = 128
    temperature: float = 20.0    # Hinton used T = 20 for the 800-800 net too
    alpha: float = 0.1           # weight of the hard-label term
    max_shift: int = 0           # Hinton's transfer set had no translations; scratch gets the same
    n_test: int = 10_000         # the official test set (quick mode: a subset)


def budget(**overrides) -> MnistBudget:
    """The classroom budget, or a tiny one in quick mode (``KDLAB_QUICK=1``)."""
    base = config.budget(MnistBudget(), MnistBudget(epochs=1, n_train=2_000, n_test=2_000))
    return replace(base, **overrides)


# Notebook 00's first distillation: a 100-100 student with only 2,000 labelled digits. Chosen so that
# distillation wins on every seed (kdlab bench mnist --only first_distillation: 5 seeds); with 5,000 digits and
# 10 epochs the same student lost on 4 of 5 seeds (T = 4), with 20,000 digits and 4 epochs on 5 of 5.
FIRST_DISTILLATION = {"hidden": (100, 100), "n_train": 2_000, "epochs": 20, "temperature": 8.0, "alpha": 0.1,
                      "lr": 2e-3}


def first_budget(**overrides) -> MnistBudget:
    """Notebook 00's first distillation (``FIRST_DISTILLATION``; quick mode: 2 epochs)."""
    return budget(**{**FIRST_DISTILLATION, "epochs": config.budget(FIRST_DISTILLATION["epochs"], 2), **overrides})


def first_distillation_check(teacher, seeds=range(5), progress: bool = False) -> dict:
    """Notebook 00's first distillation over ``seeds``: test errors from scratch and distilled per seed,
    and on how many seeds distillation won (fewer test errors)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must list at least one seed, e.g. range(5)")
    b, rows = first_budget(), []
    targets = teacher_targets(teacher, transfer_set(b))
    for seed in seeds:
        r = scratch_vs_distilled(teacher, b, seed=seed, progress=progress, targets=targets)
        rows.append({"seed": seed, "scratch": r["errors"]["scratch"], "distilled": r["errors"]["distilled"],
                     "seconds": round(r["seconds"], 1)})
    return {"budget": asdict(b), "teacher_errors": r["errors"]["teacher"], "per_seed": rows,
            "wins": sum(x["distilled"] < x["scratch"] for x in rows), "seeds": [x["seed"] for x in rows]}


def transfer_set(b: MnistBudget, *, without=()) -> torch.utils.data.TensorDataset:
    ds = datasets.take(datasets.load_mnist("train"), b.n_train, seed=0)
    return datasets.remove_classes(ds, without) if without else ds


def test_set(b: MnistBudget) -> torch.utils.data.TensorDataset:
    return datasets.take(datasets.load_mnist("test"), b.n_test, seed=0)


def _fit_config(b: MnistBudget, seed: int, **kw) -> train.DistillConfig:
    return train.DistillConfig(epochs=b.epochs, lr=b.lr, batch_size=b.batch_size,
                               max_shift=b.max_shift, seed=seed,
                               temperature=kw.get("temperature", b.temperature),
                               alpha=kw.get("alpha", b.alpha))


def teacher_targets(teacher, data) -> torch.Tensor:
    """The teacher's logits on ``data`` (computed once, reused by every student)."""
    return metrics.predict(teacher, data)


def _transfer(teacher, b: MnistBudget, targets=None, without=()):
    """The transfer set, and what the student matches on it.

    With jitter (``b.max_shift > 0``) that is the teacher itself, run on each
    shifted batch; without, the teacher's logits on the transfer set: pass
    ``targets = teacher_targets(teacher, transfer_set(b))`` to compute them once
    for many students. ``without`` drops classes from both.
    """
    data = transfer_set(b)
    if b.max_shift:
        target = teacher
    else:
        target = teacher_targets(teacher, data) if targets is None else targets
        if len(target) != len(data):
            raise ValueError(f"targets cover {len(target)} examples but the transfer set of this "
                             f"budget has {len(data)}: compute them with "
                             f"teacher_targets(teacher, transfer_set(b))")
    if without:
        keep = ~torch.isin(data.tensors[1], torch.tensor(sorted(without)))
        data = datasets.remove_classes(data, without)
        target = target[keep] if isinstance(target, torch.Tensor) else target
    return data, target


def train_scratch(b: MnistBudget, data, seed: int = 0, progress: bool = True):
    """The student architecture trained on hard labels alone, same budget and augmentation."""
    config.seed_everything(seed)
    student = models.mlp(b.hidden)
    train.fit(student, data, _fit_config(b, seed), progress=progress, desc="scratch")
    return student


def train_distilled(b: MnistBudget, data, teacher, seed: int = 0, progress: bool = True, **kw):
    """The student trained on ``distillation_loss`` against ``teacher`` (a model or cached logits)."""
    config.seed_everything(seed)
    student = models.mlp(b.hidden)
    cfg = _fit_config(b, seed, **kw)
    train.distill(student, teacher, data, cfg, progress=progress,
                  desc=f"distill T={cfg.temperature:g}")
    student.kd_record = {"temperature": cfg.temperature, "alpha": cfg.alpha, "seed": seed, "epochs": cfg.epochs,
                         "n_train": len(data), "hidden": tuple(b.hidden)}   # what check_temperature_sweep reads
    return student


def test_errors(model, b: MnistBudget) -> int:
    test = test_set(b)
    return metrics.error_count(metrics.predict(model, test), test.tensors[1])


def scratch_vs_distilled(teacher, b: MnistBudget, seed: int = 0, progress: bool = True,
                         targets=None) -> dict:
    """Teacher, scratch student and distilled student on the test set (errors and logits)."""
    data, target = _transfer(teacher, b, targets)
    start = time.perf_counter()
    scratch = train_scratch(b, data, seed, progress)
    distilled = train_distilled(b, data, target, seed, progress)
    test = test_set(b)
    logits = {name: metrics.predict(m, test) for name, m in
              [("teacher", teacher), ("scratch", scratch), ("distilled", distilled)]}
    errors = {k: metrics.error_count(v, test.tensors[1]) for k, v in logits.items()}
    return {"errors": errors, "logits": logits, "test_set": test,
            "models": {"scratch": scratch, "distilled": distilled},
            "gap_closed": metrics.gap_closed(errors["teacher"], errors["scratch"], errors["distilled"]),
            "seconds": time.perf_counter() - start, "seed": seed}


# The book's exercise 3 (13.9: "T = 1, 2, 4, 10, 20 ... What is the optimal value for your setup?"), run by the
# reader in notebook 01 on a small, fast setup: a 30-30 student, 2,000 digits, seconds per temperature.
BOOK_TEMPERATURES = (1.0, 2.0, 4.0, 10.0, 20.0)
SWEEP_EXERCISE = {"hidden": (30, 30), "n_train": 2_000, "epochs": 20, "alpha": 0.1, "lr": 3e-3}


def sweep_budget(**overrides) -> MnistBudget:
    """The reader's temperature sweep (``SWEEP_EXERCISE``; quick mode: 2 epochs)."""
    return budget(**{**SWEEP_EXERCISE, "epochs": config.budget(SWEEP_EXERCISE["epochs"], 2), **overrides})


def sweep_check(teacher, seeds=range(5), temperatures=BOOK_TEMPERATURES, progress: bool = False) -> dict:
    """The reader's sweep (``sweep_budget``) over ``seeds``: test errors per T and seed, their mean and spread,
    and each seed's best T: the answer that ``kdlab bench mnist --only temperature_exercise`` stores."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must list at least one seed, e.g. range(5)")
    b = sweep_budget()
    targets = teacher_targets(teacher, transfer_set(b))
    per_t = {str(t): [] for t in temperatures}
    for seed in seeds:
        for t, errors in temperature_sweep(teacher, b, temperatures, seed, progress, targets).items():
            per_t[str(t)].append(errors)
    best = [min(temperatures, key=lambda t, i=i: per_t[str(t)][i]) for i in range(len(seeds))]
    return {"budget": asdict(b), "seeds": seeds, "per_temperature": {t: metrics.mean_std(v) for t, v in per_t.items()},
            "best_temperature_per_seed": best}


def temperature_sweep(teacher, b: MnistBudget, temperatures, seed: int = 0, progress: bool = True,
                      targets=None) -> dict[float, int]:
    """Test errors of the distilled student at each temperature (same seed and budget)."""
    data, target = _transfer(teacher, b, targets)
    return {float(t): test_errors(train_distilled(b, data, target, seed, progress, temperature=t), b)
            for t in temperatures}


def alpha_sweep(teacher, b: MnistBudget, alphas, seed: int = 0, progress: bool = True,
                targets=None) -> dict[float, int]:
    """Test errors of the distilled student at each hard-label weight alpha."""
    data, target = _transfer(teacher, b, targets)
    return {float(a): test_errors(train_distilled(b, data, target, seed, progress, alpha=a), b)
            for a in alphas}


def omit_budget(b: MnistBudget) -> MnistBudget:
    """Notebook 01's live omit-the-3s run: half of ``b``'s epochs, so the chapter fits in ten minutes on two
    cores (``kdlab bench mnist`` runs the full budget)."""
    return replace(b, epochs=max(1, b.epochs // 2))


BIAS_GRID = [x / 4 for x in range(0, 41)]  # 0 .. 10 in steps of 0.25


def omit_class(teacher, b: MnistBudget, cls: int = 3, seed: int = 0, progress: bool = True,
               targets=None) -> dict:
    """Distill with every ``cls`` removed from the transfer set, then fix the class's bias.

    The bias is chosen on the validation split (never on the test set) as the
    one that minimises validation errors; the test set only reports.
    """
    data, target = _transfer(teacher, b, targets, without=[cls])
    student = train_distilled(b, data, target, seed, progress)
    val, test = datasets.load_mnist("val"), test_set(b)
    val_logits, test_logits = metrics.predict(student, val), metrics.predict(student, test)
    chosen = metrics.choose_class_bias(val_logits, val.tensors[1], cls, BIAS_GRID)
    return {"class": cls, "student": student, "val_logits": val_logits, "test_logits": test_logits,
            "test_labels": test.tensors[1],
            "chosen_bias": chosen, "transfer_size": len(data),
            "before": metrics.class_bias_effect(test_logits, test.tensors[1], cls, 0.0),
            "after": metrics.class_bias_effect(test_logits, test.tensors[1], cls, chosen)}


def first_distillation_verdict(errors: dict, check: dict | None = None, *, takeaways: bool = False) -> Bullets:
    """What notebook 00's first distillation measured, in words: the distilled student's test errors against
    the same student's from scratch (and the teacher's); ``check`` (the ``first_distillation`` entry of
    ``kdlab bench mnist``'s results file) adds the same budget over several seeds; with ``takeaways``, the
    chapter's takeaways too."""
    s, d, t = errors["scratch"], errors["distilled"], errors["teacher"]
    if d < s:
        line = (f"the distilled student made {d:,} test errors, {s - d:,} fewer than the same student trained "
                f"from scratch ({s:,}); the teacher made {t:,}")
    elif d > s:
        line = (f"the distilled student made {d:,} test errors, {d - s:,} more than the same student trained "
                f"from scratch ({s:,}): at this budget the soft targets did not pay off; the teacher made {t:,}")
    else:
        line = f"the distilled student and the student from scratch both made {d:,} test errors; the teacher {t:,}"
    lines = [f"Your run (one seed): {line}."]
    if check is not None:
        rows = check["per_seed"]
        sm, dm = (statistics.mean(r[k] for r in rows) for k in ("scratch", "distilled"))
        lines.append(f"Distilled won on {check['wins']} of {len(rows)} seeds at the classroom budget "
                     f"({sm:,.1f} → {dm:,.1f} test errors on average; {check['command']}).")
    if not takeaways:
        return Bullets("\n".join(lines))
    return Bullets("\n".join([
        "Distillation trains a small student to match a big teacher's soft targets, not only its answers.",
        "The temperature T brings out the teacher's dark knowledge; the T² factor keeps its pull from fading.",
        *lines,
        "Every number in this lab is computed in front of you; quick mode is for tests, classroom mode for results.",
    ]))


def noise_verdict(spread: dict) -> Bullets:
    """One setting trained from several seeds (``DistillationPlayground.seed_spread``) and the rule it
    gives: two settings differ for real only if their means differ by more than ~2 standard deviations."""
    e, m, s = spread["errors"], spread["mean"], spread["std"]
    return Bullets("\n".join([
        f"{len(e)} seeds at T = {spread['temperature']:g}, alpha = {spread['alpha']:g}: "
        f"{', '.join(f'{v:,}' for v in e)} test errors (mean {m:,.1f}, standard deviation {s:,.1f})",
        f"same code, same data, only the random start and the batch order changed: {max(e) - min(e):,} errors apart",
        f"rule of thumb: believe a difference between two settings only if it is larger than 2 standard "
        f"deviations of this noise (here {2 * s:,.0f} errors); if it is smaller, run more seeds",
    ]))


def takeaways(results: dict, spread: dict | None = None) -> Bullets:
    """Chapter 01's takeaways, each with its measured numbers: ``results`` is ``kdlab bench mnist``'s results
    file (``store.read_results("mnist")``), ``spread`` the reader's own seed spread from the playground."""
    main, sweep, omit = results["main"], results["temperature_sweep"], results["omit3"]
    seeds = main["per_seed"]
    wins = sum(r["distilled"] < r["scratch"] for r in seeds)
    h = HINTON_2015
    h_closed = metrics.gap_closed(h["teacher (1200-1200, dropout, jitter)"], h["small net from scratch (800-800)"],
                                  h["distilled small net (800-800, T = 20)"])
    best = {k: min(sweep[k], key=sweep[k].get) for k in ("800-800", "30-30")}
    t_hi = max(sweep["30-30"], key=float)
    high = sweep["30-30"][t_hi]
    scratch30 = sweep["30-30 scratch"]
    vs = "worse than" if high > scratch30 else "no better than" if high == scratch30 else "still better than"
    before, after = omit["before"], omit["after"]
    lines = [
        "A teacher's soft targets carry its dark knowledge (which wrong classes look alike); T makes it "
        "visible, and the T² factor stops the soft term's pull from vanishing as T grows.",
        f"800-800 student, {len(seeds)} seeds ({results['command']}): {main['scratch_mean']:.1f} test errors from "
        f"scratch, {main['distilled_mean']:.1f} distilled; distillation won on {wins} of {len(seeds)} seeds and closed "
        f"{main['gap_closed_mean']:.0%} of the gap to the teacher ({main['teacher_errors']}); Hinton et al. (theirs): "
        f"{h['small net from scratch (800-800)']} → {h['distilled small net (800-800, T = 20)']}, {h_closed:.0%}.",
        f"The best T depends on the student: {sweep['800-800'][best['800-800']]} errors at T = {best['800-800']} for "
        f"800-800, {sweep['30-30'][best['30-30']]} at T = {best['30-30']} for 30-30, whose T = {t_hi} run "
        f"({high}) is {vs} its scratch run ({sweep['30-30 scratch']}) (one seed per point).",
        f"With no 3 in its transfer set the student still got {before['class_correct'] / before['class_total']:.0%} "
        f"of the test 3s right; a bias of +{omit['chosen_bias']:g} on the 3 (chosen on validation) raised that to "
        f"{after['class_correct'] / after['class_total']:.0%} (Hinton et al.: "
        f"{h['omit 3s: share of test 3s right before the fix']:.0%} → "
        f"{h['omit 3s: share of test 3s right after the fix']:.1%}).",
    ]
    if spread is not None:
        lines.append(f"Your playground's run-to-run noise: a standard deviation of {spread['std']:.1f} errors over "
                     f"{len(spread['errors'])} seeds; differences smaller than about {2 * spread['std']:,.0f} errors "
                     f"need more seeds.")
    return Bullets("\n".join(lines))
