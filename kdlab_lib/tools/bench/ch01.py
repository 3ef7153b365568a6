"""``kdlab bench mnist``: chapter 01 (``chapters.ch01_soft_labels``) over several seeds and settings.

Writes ``data/results/mnist.json`` (in quick mode: the cache) with the command, git commit, seeds,
budget and date beside the numbers.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from ...chapters import ch01_soft_labels as ch01
from ...core import models, store

SEEDS = (0, 1, 2)
TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)
ALPHAS = (0.0, 0.1, 0.5, 0.9)


FIRST_SEEDS = tuple(range(5))   # notebook 00's first distillation must win on every one


def first_distillation(teacher, seeds=FIRST_SEEDS, progress: bool = False) -> dict:
    """Notebook 00's first distillation (``ch01.first_budget``) over ``seeds``, printed."""
    check = ch01.first_distillation_check(teacher, seeds, progress)
    print("first distillation (scratch, distilled):", [(r["scratch"], r["distilled"]) for r in check["per_seed"]],
          f"wins {check['wins']} of {len(seeds)}", flush=True)
    return check


def temperature_exercise(teacher, seeds=FIRST_SEEDS, progress: bool = False) -> dict:
    """Notebook 01's temperature-sweep exercise (the book's exercise 3, ``ch01.sweep_budget``) over ``seeds``."""
    check = ch01.sweep_check(teacher, seeds, progress=progress)
    print("temperature exercise (mean test errors per T):",
          {t: round(v["mean"], 1) for t, v in check["per_temperature"].items()},
          "best T per seed:", check["best_temperature_per_seed"], flush=True)
    return check


ENTRIES = {"first_distillation": first_distillation,       # --only KEY: a five-seed check of a notebook's live run
           "temperature_exercise": temperature_exercise}


def bench_only(key: str, out: Path | None = None, seeds=FIRST_SEEDS, progress: bool = False) -> dict:
    """``kdlab bench mnist --only KEY``: re-run only one of ``ENTRIES`` and store it, with its own command,
    commit and date, under ``KEY`` in the existing results file."""
    run = store.BenchRun("mnist", seeds, command=f"kdlab bench mnist --only {key}")
    check = ENTRIES[key](models.load_teacher("mnist", device="cpu"), seeds, progress)
    path, results = run.write_entry(key, check, out)
    print(f"results written to {path} (key {key})")
    return results


def bench_mnist(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """Chapter 01: teacher vs scratch vs distilled 800-800 students over ``seeds``, the temperature sweep
    (800-800 and 30-30) and the alpha sweep on the first seed, and the omit-the-3s experiment."""
    run = store.BenchRun("mnist", seeds)   # provenance: the code that ran, read before it runs
    teacher = models.load_teacher("mnist", device="cpu")
    b = ch01.budget()
    small = ch01.budget(hidden=(30, 30), lr=3e-3)
    targets = ch01.teacher_targets(teacher, ch01.transfer_set(b))  # shared by every student
    per_seed = []
    for seed in seeds:
        r = ch01.scratch_vs_distilled(teacher, b, seed=seed, progress=progress, targets=targets)
        per_seed.append({"seed": seed, **{k: v for k, v in r["errors"].items()},
                         "gap_closed": r["gap_closed"]})
        print(f"seed {seed}: teacher {r['errors']['teacher']}, scratch {r['errors']['scratch']}, "
              f"distilled {r['errors']['distilled']}", flush=True)
    sweep_big = ch01.temperature_sweep(teacher, b, TEMPERATURES, progress=progress, targets=targets)
    print(f"T sweep 800-800: {sweep_big}", flush=True)
    sweep_small = ch01.temperature_sweep(teacher, small, TEMPERATURES, progress=progress,
                                                targets=targets)
    print(f"T sweep 30-30: {sweep_small}", flush=True)
    scratch_small = ch01.test_errors(
        ch01.train_scratch(small, ch01.transfer_set(small), 0, progress), small)
    alphas = ch01.alpha_sweep(teacher, b, ALPHAS, progress=progress, targets=targets)
    print(f"alpha sweep 800-800: {alphas}", flush=True)
    omit = ch01.omit_class(teacher, b, cls=3, progress=progress, targets=targets)
    entries = {key: store.BenchRun("mnist", FIRST_SEEDS, command=f"kdlab bench mnist --only {key}").envelope(
        check(teacher, progress=progress)) for key, check in ENTRIES.items()}   # each with its own envelope
    teacher_errors = per_seed[0]["teacher"]
    scratch_mean = statistics.mean(r["scratch"] for r in per_seed)
    distilled_mean = statistics.mean(r["distilled"] for r in per_seed)
    path, results = run.write({
        "budget": asdict(b), "budget_30_30": asdict(small),
        "teacher": {"name": "mnist", "sha256": teacher.card["sha256"], "test_errors": teacher_errors},
        "main": {"per_seed": per_seed, "teacher_errors": teacher_errors, "scratch_mean": scratch_mean,
                 "distilled_mean": distilled_mean,
                 "gap_closed_mean": (scratch_mean - distilled_mean) / (scratch_mean - teacher_errors)
                 if scratch_mean != teacher_errors else None,
                 "distilled_beats_scratch_every_seed": all(r["distilled"] < r["scratch"] for r in per_seed)},
        "temperature_sweep": {"800-800": number_keys(sweep_big), "30-30": number_keys(sweep_small),
                              "30-30 scratch": scratch_small},
        "alpha_sweep": {"800-800": number_keys(alphas), "temperature": b.temperature},
        "omit3": {k: omit[k] for k in ("class", "chosen_bias", "transfer_size", "before", "after")},
        "published": ch01.HINTON_2015,
        **entries,
    }, out)
    o = results["omit3"]
    print(f"results written to {path}")
    print(f"teacher test errors:               {teacher_errors}")
    print(f"scratch 800-800 (mean of {len(seeds)} seeds): {scratch_mean:.1f}")
    print(f"distilled 800-800 (mean of {len(seeds)}):     {distilled_mean:.1f}")
    print(f"gap closed by distillation:         {results['main']['gap_closed_mean']:.0%}"
          if results["main"]["gap_closed_mean"] is not None else "gap closed: n/a")
    print(f"3s right before / after bias fix:   {o['before']['class_correct'] / o['before']['class_total']:.1%}"
          f" / {o['after']['class_correct'] / o['after']['class_total']:.1%} (bias {o['chosen_bias']:g})")
    print(f"wall seconds:                       {results['seconds']:.0f}")
    return results


def number_keys(d: dict) -> dict:
    """A sweep keyed by number as a JSON object keyed by text: ``{1.0: x} -> {"1": x}``."""
    return {f"{k:g}": v for k, v in d.items()}
