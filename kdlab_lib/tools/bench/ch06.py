"""``kdlab bench eval``: chapter 06's evaluation of each teacher/student pair (``ch06_evaluation``).

For every family whose shipped teacher is here, students are trained with the library over
several seeds (scratch and distilled), and for each teacher/student pair the bench records the
headline metric, ECE before and after temperature scaling (T fitted on validation data), top-1
agreement and KL with the teacher, and the largest per-category gap; MNIST adds robustness to
noise / shift / rotation and confidence on Fashion-MNIST, GPT-2 adds held-out Wikipedia. A family
whose teacher is missing is listed with the command that creates it. Writes
``data/results/eval.json`` (in quick mode: the cache).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ...chapters import ch01_soft_labels as ch01
from ...chapters import ch02_distilbert as ch02
from ...chapters import ch03_gpt2 as ch03
from ...chapters import ch06_evaluation as ch06
from ...core import datasets, metrics, models, store
from .ch01 import SEEDS

LM_SEEDS = 2   # GPT-2 seeds: a distilled 2 x 128 student at chapter 03's budget takes minutes of a shared core


def _largest(report: dict) -> dict | None:
    w = report["largest_gap"]
    return None if w is None else {k: w[k] for k in ("category", "n", "teacher", "student", "gap")}


def _largest_gaps(bundle, student: str) -> dict:
    """``{"largest_gap_by_<category>": the student's largest shortfall}`` for every way the bundle splits."""
    return {f"largest_gap_by_{by.replace(' ', '_')}": _largest(ch06.gap_report(bundle, "teacher", student, by=by))
            for by in bundle.categories}


def _summary(per_seed: list, keys) -> dict:
    return {k: metrics.mean_std([r[k] for r in per_seed]) for k in keys}


def mnist_family(seeds, progress: bool) -> dict:
    teacher = models.load_teacher("mnist", device="cpu")
    b = ch06.mnist_budget()
    targets = ch01.teacher_targets(teacher, ch01.transfer_set(b))
    pairs = {"scratch": [], "distilled": []}
    teacher_row = None
    robust = {}
    for seed in seeds:
        students = ch06.mnist_students(teacher, b, seed, progress, targets=targets)
        named = {"teacher": teacher, **students}
        bundle = ch06.mnist_bundle(named, b)
        cal, fid = ch06.calibration(bundle)["rows"], ch06.fidelity(bundle)["rows"]
        ood = ch06.out_of_distribution(bundle)
        if teacher_row is None:
            teacher_row = {"test_errors": bundle.headline["teacher"], **{k: cal["teacher"][k] for k in (
                "ece", "fitted_temperature", "ece_scaled", "mean_confidence")}}
            if ood:
                teacher_row["fashion_confidence"] = ood["rows"]["teacher"]["confidence_fashion"]
                teacher_row["fashion_auroc"] = ood["rows"]["teacher"]["auroc"]
        if seed == seeds[0]:
            test = ch01.test_set(b)
            robust = {kind: ch06.robustness(named, test, kind) for kind in ch06.ROBUSTNESS_LEVELS}
        for name in students:
            rep = ch06.gap_report(bundle, "teacher", name)
            row = {"seed": seed, "test_errors": bundle.headline[name], "ece": cal[name]["ece"],
                   "fitted_temperature": cal[name]["fitted_temperature"], "ece_scaled": cal[name]["ece_scaled"],
                   "agreement": fid[name]["test"]["agreement"], "kl": fid[name]["test"]["kl"],
                   "agreement_seen": fid[name]["seen"]["agreement"], "kl_seen": fid[name]["seen"]["kl"],
                   "disagreements": fid[name]["disagreements"], "largest_class_gap": _largest(rep)}
            if ood:
                row["fashion_confidence"] = ood["rows"][name]["confidence_fashion"]
                row["fashion_auroc"] = ood["rows"][name]["auroc"]
            pairs[name].append(row)
            print(f"MNIST seed {seed} {name}: {row['test_errors']} errors, ECE {row['ece']:.4f} -> "
                  f"{row['ece_scaled']:.4f} (T {row['fitted_temperature']:.2f}), agreement {row['agreement']:.4f}, "
                  f"largest gap class {row['largest_class_gap'] and row['largest_class_gap']['category']}", flush=True)
    keys = ["test_errors", "ece", "ece_scaled", "fitted_temperature", "agreement", "kl", "agreement_seen", "kl_seen"]
    keys += ["fashion_confidence", "fashion_auroc"] if "fashion_confidence" in pairs["scratch"][0] else []
    return {"available": True, "teacher": {"name": "mnist", "sha256": teacher.card["sha256"], **teacher_row},
            "budget": asdict(b), "seeds": list(seeds), "headline": "test errors (of 10,000)",
            "pairs": {name: {"summary": _summary(rows, keys), "per_seed": rows} for name, rows in pairs.items()},
            "robustness_first_seed": robust,
            "fashion_mnist": None if datasets.fashion_mnist_available() else
            f"not installed: `{datasets.INSTALL_FASHION}`"}


def gpt2_family(seeds, progress: bool) -> dict:
    teacher, tok = ch03.load()
    b = ch03.budget()
    blocks = ch06.lm_data(tok, b)
    train_blocks, val_blocks, test_blocks, wiki_blocks = (blocks[k] for k in ("train", "val", "test", "wiki"))
    pairs = {"scratch": [], "distilled": []}
    teacher_row = None
    for seed in seeds:
        students = ch06.lm_students(teacher, train_blocks, b, seed, progress)
        bundle = ch06.lm_bundle({"teacher": teacher, **students}, tok, train_blocks, test_blocks, val_blocks,
                              wiki_blocks)
        cal, fs = ch06.lm_calibration(bundle)["rows"], ch06.lm_fidelity_and_shift(bundle)["rows"]
        if teacher_row is None:
            teacher_row = {"perplexity": bundle.headline["teacher"],
                           "wiki_perplexity": fs["teacher"]["shifted"]["perplexity"],
                           **{k: cal["teacher"][k] for k in ("ece", "fitted_temperature", "ece_scaled", "accuracy")}}
        for name in students:
            row = {"seed": seed, "perplexity": bundle.headline[name],
                   "wiki_perplexity": fs[name]["shifted"]["perplexity"],
                   "top1_accuracy": cal[name]["accuracy"], "ece": cal[name]["ece"],
                   "fitted_temperature": cal[name]["fitted_temperature"], "ece_scaled": cal[name]["ece_scaled"],
                   "agreement": fs[name]["test"]["agreement"], "kl": fs[name]["test"]["kl"],
                   "wiki_agreement": fs[name]["shifted"]["agreement"], "wiki_kl": fs[name]["shifted"]["kl"]}
            row |= _largest_gaps(bundle, name)
            pairs[name].append(row)
            print(f"GPT-2 seed {seed} {name}: perplexity {row['perplexity']:.1f} (wiki {row['wiki_perplexity']:.1f}), "
                  f"ECE {row['ece']:.4f} -> {row['ece_scaled']:.4f}, agreement {row['agreement']:.4f}", flush=True)
    keys = ["perplexity", "wiki_perplexity", "top1_accuracy", "ece", "ece_scaled", "fitted_temperature", "agreement",
            "kl", "wiki_agreement", "wiki_kl"]
    return {"available": True, "teacher": {"name": "gpt2-tiny", "sha256": teacher.card["sha256"], **teacher_row},
            "budget": asdict(b), "seeds": list(seeds), "test_blocks": len(test_blocks),
            "headline": "perplexity on held-out Shakespeare (test split)",
            "pairs": {name: {"summary": _summary(rows, keys), "per_seed": rows} for name, rows in pairs.items()}}


def sentiment_family(seeds, progress: bool) -> dict:
    """The BERT family: per seed, the teacher fine-tuned on Rotten Tomatoes and two DistilBERT-style
    students from its layers (fine-tuned on labels; distilled from the teacher classifier)."""
    teacher_mlm, tok = ch02.load()
    b = ch02.budget()
    pairs, teachers = {"fine-tuned": [], "distilled": []}, []
    for seed in seeds:
        named = ch06.sentiment_students(teacher_mlm, tok, b, seed, progress)
        bundle = ch06.sentiment_bundle(named, tok, b)
        cal, fid = ch06.calibration(bundle)["rows"], ch06.fidelity(bundle)["rows"]
        teachers.append({"seed": seed, "test_errors": bundle.headline["teacher"],
                         **{k: cal["teacher"][k] for k in ("ece", "fitted_temperature", "ece_scaled")}})
        for name in pairs:
            row = {"seed": seed, "test_errors": bundle.headline[name], "ece": cal[name]["ece"],
                   "fitted_temperature": cal[name]["fitted_temperature"], "ece_scaled": cal[name]["ece_scaled"],
                   "agreement": fid[name]["test"]["agreement"], "kl": fid[name]["test"]["kl"],
                   "agreement_seen": fid[name]["seen"]["agreement"], "kl_seen": fid[name]["seen"]["kl"],
                   "disagreements": fid[name]["disagreements"]}
            row |= _largest_gaps(bundle, name)
            pairs[name].append(row)
            print(f"sentiment seed {seed} {name}: {row['test_errors']} errors (teacher {teachers[-1]['test_errors']}), "
                  f"ECE {row['ece']:.4f} -> {row['ece_scaled']:.4f}, agreement {row['agreement']:.4f}", flush=True)
    keys = ["test_errors", "ece", "ece_scaled", "fitted_temperature", "agreement", "kl", "agreement_seen", "kl_seen"]
    mean = lambda k: sum(t[k] for t in teachers) / len(teachers)
    return {"available": True, "teacher": {"name": "bert-tiny", "sha256": teacher_mlm.card["sha256"],
                                           "fine-tuned per seed": teachers,
                                           **{k: mean(k) for k in ("test_errors", "ece", "ece_scaled",
                                                                   "fitted_temperature")}},
            "budget": asdict(b), "seeds": list(seeds), "test_snippets": int(len(bundle.labels["test"])),
            "headline": "test errors (teacher: mean over its per-seed fine-tunings)",
            "pairs": {name: {"summary": _summary(rows, keys), "per_seed": rows} for name, rows in pairs.items()}}


def bench_eval(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """Every available family: MNIST over ``seeds``, GPT-2 over the first ``LM_SEEDS`` of them."""
    run = store.BenchRun("eval", seeds)   # provenance: the code that ran, read before it runs
    status = ch06.family_status()
    families, timings = {}, {}

    def save(complete: bool) -> tuple:   # after every family, so a long run leaves what it has measured
        return run.write({"lm_seeds": list(seeds[:LM_SEEDS]), "ece_bins": 15, "complete": complete,
                          "families": families, "timings_seconds": timings}, out)

    for name, fam in ch06.FAMILIES.items():
        if not status[name]["available"]:
            families[name] = {"available": False, "command": status[name]["command"],
                              "message": status[name]["message"]}
            print(f"{name}: {status[name]['message']}", flush=True)
            continue
        t = time.perf_counter()
        if fam.teacher == "mnist":
            families[name] = mnist_family(tuple(seeds), progress)
        elif fam.teacher == "gpt2-tiny":
            families[name] = gpt2_family(tuple(seeds[:LM_SEEDS]), progress)
        elif fam.teacher == "bert-tiny":
            families[name] = sentiment_family(tuple(seeds), progress)
        else:
            families[name] = {"available": True, "evaluated": False,
                              "message": "its teacher is here but kdlab bench eval does not evaluate this family yet"}
        timings[name] = round(time.perf_counter() - t, 1)
        save(complete=False)
    path, results = save(complete=True)
    seconds = results["seconds"]
    print(f"results written to {path}")
    for name, fam in families.items():
        if not fam.get("available") or "pairs" not in fam:
            print(f"{name}: {fam.get('message')}")
            continue
        head = "test_errors" if "test_errors" in fam["teacher"] else "perplexity"
        print(f"{name}: teacher {head} {fam['teacher'][head]:.1f}, ECE {fam['teacher']['ece']:.4f} -> "
              f"{fam['teacher']['ece_scaled']:.4f}")
        for pair, r in fam["pairs"].items():
            s = r["summary"]
            print(f"  {pair}: {head} {s[head]['mean']:.1f} ± {s[head]['std']:.1f}, ECE {s['ece']['mean']:.4f} -> "
                  f"{s['ece_scaled']['mean']:.4f}, agreement {s['agreement']['mean']:.4f}")
    print(f"wall seconds: {seconds:.0f}")
    return results
