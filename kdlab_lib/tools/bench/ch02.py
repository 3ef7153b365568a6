"""``kdlab bench bert``: chapter 02 (``chapters.ch02_distilbert``) over several seeds.

Writes ``data/results/bert.json`` (in quick mode: the cache).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from ...chapters import ch02_distilbert as ch02
from ...core import config, metrics, models, store
from .ch01 import SEEDS


def layer_sets(teacher, tok, train_blocks, val_blocks, seeds=SEEDS, progress: bool = False) -> dict:
    """Chapter 02's question which teacher layers the 3-layer student copies (``ch02.layer_set_check``), printed."""
    check = ch02.layer_set_check(teacher, tok, train_blocks, val_blocks, ch02.budget(), seeds=seeds, progress=progress)
    print("layer sets (held-out MLM accuracy after distillation):",
          {k: round(v["distilled"]["mean"], 4) for k, v in check["sets"].items()}, "best", check["best"], flush=True)
    return check


def bench_only(key: str, out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """``kdlab bench bert --only layer_sets``: re-run that measurement over three seeds and store it, with its own
    command, commit and date, under that key in the existing results file."""
    if key != "layer_sets":
        raise ValueError(f"kdlab bench bert has no entry {key!r}; it has 'layer_sets'")
    run = store.BenchRun("bert", seeds, command=f"kdlab bench bert --only {key}")
    teacher, tok = ch02.load()
    check = layer_sets(teacher, tok, ch02.mlm_blocks(tok, "train"), ch02.mlm_blocks(tok, "val", config.budget(400, 8)),
                       seeds, progress)
    path, results = run.write_entry(key, check, out)
    print(f"results written to {path} (key {key})")
    return results


def bench_bert(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """Chapter 02: the triple-loss ablations over ``seeds``, then sentiment fine-tuning of teacher and
    student (retention, size, speed) beside the bag-of-words floor."""
    run = store.BenchRun("bert", seeds)   # provenance: the code that ran, read before it runs
    teacher, tok = ch02.load()
    b = ch02.budget()
    train_blocks = ch02.mlm_blocks(tok, "train")
    val_blocks = ch02.mlm_blocks(tok, "val", config.budget(400, 8))
    teacher_score = ch02.mlm_score(teacher, tok, val_blocks)
    ablations, students = {}, {}  # the full-triple-loss students go on to the sentiment task
    for name in ch02.ABLATIONS:
        scores = []
        for seed in seeds:
            score, student = ch02.ablation(teacher, tok, train_blocks, val_blocks, b, name, seed, progress)
            scores.append(score["accuracy"])
            if name == "full triple loss":
                students[seed] = student
        ablations[name] = metrics.mean_std(scores)
        print(f"ablation {name}: {ablations[name]['mean']:.4f} ± {ablations[name]['std']:.4f}", flush=True)
    sets_run = store.BenchRun("bert", seeds, command="kdlab bench bert --only layer_sets")
    sets = sets_run.envelope(layer_sets(teacher, tok, train_blocks, val_blocks, seeds, progress))
    n_quick = config.budget(None, 64)  # every snippet in a real run, 64 per split in quick mode
    db = ch02.budget(n_sentiment=n_quick, sentiment_steps=config.budget(800, 2))  # 2.5 passes over 10,202 snippets
    train_s, val_s, test_s = (ch02.sentiment_tensors(tok, split, db.max_len, n_quick)
                              for split in ("train", "val", "test"))
    bow = ch02.bow_logistic_regression(train_s, val_s, tok)
    bow_acc = metrics.accuracy(bow["model"](test_s[0]), test_s[2])
    acc_t, acc_s = [], []
    for seed in seeds:
        t_clf = ch02.fine_tune(teacher, train_s, db, seed, progress)
        s_clf = ch02.fine_tune(students[seed], train_s, db, seed, progress)
        acc_t.append(ch02.accuracy(t_clf, test_s))
        acc_s.append(ch02.accuracy(s_clf, test_s))
        print(f"seed {seed}: sentiment teacher {acc_t[-1]:.4f}, student {acc_s[-1]:.4f}", flush=True)
    x = test_s[0][:64], test_s[1][:64]
    reps = config.budget(20, 1)
    ms_t, ms_s = metrics.latency_ms(t_clf, *x, repeats=reps), metrics.latency_ms(s_clf, *x, repeats=reps)
    downstream = {
        "bag-of-words floor, test accuracy": bow_acc,
        "teacher, test accuracy (mean)": statistics.mean(acc_t),
        "student, test accuracy (mean)": statistics.mean(acc_s),
        "accuracy retained (student / teacher)": statistics.mean(acc_s) / statistics.mean(acc_t),
        "parameters (student / teacher)": models.n_params(s_clf) / models.n_params(t_clf),
        "teacher ms per batch of 64": ms_t, "student ms per batch of 64": ms_s,
        "speed-up (teacher time / student time)": ms_t / ms_s,
        "per_seed": {"teacher": acc_t, "student": acc_s}, "training snippets": len(train_s[2]),
        "fine-tuning steps": db.sentiment_steps,
    }
    downstream["verdict"] = ch02.downstream_verdict(
        bow_acc, downstream["teacher, test accuracy (mean)"], downstream["student, test accuracy (mean)"],
        downstream["parameters (student / teacher)"], downstream["speed-up (teacher time / student time)"])
    path, results = run.write({
        "budget": asdict(b),
        "teacher": {"name": "bert-tiny", "sha256": teacher.card["sha256"],
                    "val_mlm_accuracy": teacher_score["accuracy"], "val_mlm_perplexity": teacher_score["perplexity"]},
        "student_val_mlm_accuracy": ablations["full triple loss"], "val_blocks": len(val_blocks),
        "ablations": ablations, "verdict": ch02.ablation_verdict(ablations), "downstream": downstream,
        "published": ch02.SANH_2019, "layer_sets": sets,
    }, out)
    print(f"results written to {path}")
    print(results["verdict"])
    print(f"teacher / student val MLM accuracy:   {teacher_score['accuracy']:.4f} / "
          f"{ablations['full triple loss']['mean']:.4f}")
    print(f"sentiment teacher / student / BoW:    {statistics.mean(acc_t):.4f} / {statistics.mean(acc_s):.4f} / "
          f"{bow_acc:.4f}")
    print(f"retention {downstream['accuracy retained (student / teacher)']:.1%}, parameters "
          f"{downstream['parameters (student / teacher)']:.0%}, "
          f"speed-up {downstream['speed-up (teacher time / student time)']:.2f}x")
    print(f"wall seconds:                         {results['seconds']:.0f}")
    return results
