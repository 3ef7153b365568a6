"""``kdlab bench gpt2`` and ``kdlab bench gpt2-beyond``: chapter 03 (``chapters.ch03_gpt2``) over
several seeds: the four students, the loss / temperature / top-k sweeps, and sequence-level and
on-policy KD. Writes ``data/results/gpt2.json`` and ``gpt2-beyond.json`` (in quick mode: the cache).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from ...chapters import ch03_gpt2 as ch03
from ...core import metrics, models, store
from .ch01 import SEEDS, number_keys

GPT_TEMPERATURES = (1.0, 2.0, 4.0, 10.0, 20.0)
GPT_TOP_K = (1, 5, 20, 100)
EXERCISE_SEEDS = tuple(range(5))   # notebook 03's book exercise 1 is checked on each


def alternatives_exercise(teacher, pretrained, seeds=EXERCISE_SEEDS, progress: bool = False) -> dict:
    """Notebook 03's book exercise 1 (``ch03.alternatives_check``: four students at ``ch03.exercise_budget``)
    over ``seeds``, printed."""
    check = ch03.alternatives_check(teacher, pretrained, seeds, progress)
    print("alternatives exercise (mean perplexity):", {a: round(v["mean"], 1) for a, v in check["perplexity"].items()},
          "distilled beat:", check["distilled_beats"], flush=True)
    return check


def written_exercise(teacher, seeds=EXERCISE_SEEDS, progress: bool = False) -> dict:
    """Notebook 03b's book exercise 2 (``ch03.written_check``: human- vs teacher-written text at
    ``ch03.exercise_budget``) over ``seeds``, printed."""
    check = ch03.written_check(teacher, seeds, progress)
    print("written exercise (mean perplexity):", {a: round(v["mean"], 1) for a, v in check["perplexity"].items()},
          f"teacher-written won on {check['teacher_written_wins']} of {len(check['seeds'])}", flush=True)
    return check


ENTRIES = {"alternatives_exercise": "gpt2", "written_exercise": "gpt2-beyond"}   # --only KEY -> its results file


def bench_only(key: str, out: Path | None = None, seeds=EXERCISE_SEEDS, progress: bool = False) -> dict:
    """``kdlab bench gpt2 --only alternatives_exercise`` (notebook 03's book exercise 1) or ``kdlab bench
    gpt2-beyond --only written_exercise`` (03b's book exercise 2): re-run it over five seeds and store it, with
    its own command, commit and date, under that key in the existing results file."""
    if key not in ENTRIES:
        raise ValueError(f"no entry {key!r}; the chapter 03 entries are {sorted(ENTRIES)}")
    name = ENTRIES[key]
    run = store.BenchRun(name, seeds, command=f"kdlab bench {name} --only {key}")
    teacher, _tok = ch03.load()
    if key == "alternatives_exercise":
        check = alternatives_exercise(teacher, models.load_teacher("gpt2-wiki-student", device="cpu"), seeds, progress)
    else:
        check = written_exercise(teacher, seeds, progress)
    path, results = run.write_entry(key, check, out)
    print(f"results written to {path} (key {key})")
    return results


def bench_gpt2(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """Chapter 03: the four students over ``seeds``; then the loss, temperature and top-k sweeps on the
    first seed, as one lockstep group sharing its forward-KL / T = 1 / full-logit student."""
    run = store.BenchRun("gpt2", seeds)   # provenance: the code that ran, read before it runs
    teacher, tok = ch03.load()
    pretrained = models.load_teacher("gpt2-wiki-student", device="cpu")
    b = ch03.budget()
    train_blocks, val_blocks = ch03.shakespeare_blocks(tok, "train", b), ch03.shakespeare_blocks(tok, "val", b)
    teacher_ppl = metrics.perplexity(teacher, val_blocks)
    per_seed = {name: [] for name in ch03.VARIANTS}
    for seed in seeds:
        for name, r in ch03.compare_students(teacher, pretrained, train_blocks, val_blocks, b, seed, progress).items():
            per_seed[name].append(r["perplexity"])
        print(f"seed {seed}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in per_seed.items()), flush=True)
    compare = {name: metrics.mean_std(v) for name, v in per_seed.items()}
    # the sweeps: one lockstep group of students (one teacher forward per step serves them all),
    # sharing the forward-KL, T = 1, full-logit anchor
    settings = {"forward KL": {}, "reverse KL": {"loss": "reverse"}, "JSD (beta 0.5)": {"loss": "jsd", "beta": 0.5}}
    settings |= {f"T={t:g}": {"temperature": t} for t in GPT_TEMPERATURES if t != 1.0}
    settings |= {f"top-{k}": {"top_k": k} for k in GPT_TOP_K}
    ppl = ch03.sweep_students(teacher, train_blocks, val_blocks, b, settings, seeds[0], progress)
    objectives = {name: ppl[name] for name in ("forward KL", "reverse KL", "JSD (beta 0.5)")}
    temps = {t: ppl["forward KL" if t == 1.0 else f"T={t:g}"] for t in GPT_TEMPERATURES}
    topk = {"full": ppl["forward KL"]} | {f"{k}": ppl[f"top-{k}"] for k in GPT_TOP_K}
    print(f"sweeps (seed {seeds[0]}): {ppl}", flush=True)
    exercise_run = store.BenchRun("gpt2", EXERCISE_SEEDS, command="kdlab bench gpt2 --only alternatives_exercise")
    exercise = exercise_run.envelope(alternatives_exercise(teacher, pretrained, EXERCISE_SEEDS, progress))
    path, results = run.write({
        "budget": asdict(b),
        "teacher": {"name": "gpt2-tiny", "sha256": teacher.card["sha256"], "val_perplexity": teacher_ppl,
                    "params": models.n_params(teacher)},
        "student_params": models.n_params(ch03.new_student_like(teacher, b)), "val_blocks": len(val_blocks),
        "compare": compare, "verdict": ch03.gpt_verdict(compare),
        "objectives": objectives, "temperature_sweep": number_keys(temps),
        "topk_sweep": topk,
        "storage": {"lab vocabulary": ch03.logit_storage(tok.vocab_size),
                    "GPT-2 vocabulary": ch03.logit_storage(50_257)},
        "alternatives_exercise": exercise,
    }, out)
    print(f"results written to {path}")
    print(results["verdict"])
    print(f"teacher held-out perplexity:  {teacher_ppl:.1f}")
    for name, r in compare.items():
        print(f"{name + ':':<46} {r['mean']:.1f} ± {r['std']:.1f}")
    print(f"wall seconds:                 {results['seconds']:.0f}")
    return results


def bench_gpt2_beyond(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """Notebook 03b: sequence-level and on-policy KD beside token-level KD and plain
    training on the same number of blocks (``ch03_gpt2.beyond_logits``), over ``seeds``."""
    run = store.BenchRun("gpt2-beyond", seeds)   # provenance: the code that ran, read before it runs
    teacher, tok = ch03.load()
    b = ch03.budget()
    train_blocks, val_blocks = ch03.shakespeare_blocks(tok, "train", b), ch03.shakespeare_blocks(tok, "val", b)
    per_seed, seconds, writing = {name: [] for name in ch03.BEYOND}, {name: [] for name in ch03.BEYOND}, []
    for seed in seeds:
        r = ch03.beyond_logits(teacher, train_blocks, val_blocks, b, seed, progress=progress)
        writing.append(r.pop("teacher writing seconds"))
        for name, v in r.items():
            per_seed[name].append(v["perplexity"])
            seconds[name].append(v["seconds"])
        print(f"seed {seed}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in per_seed.items()), flush=True)
    compare = {name: metrics.mean_std(v) for name, v in per_seed.items()}
    exercise_run = store.BenchRun("gpt2-beyond", EXERCISE_SEEDS,
                                  command="kdlab bench gpt2-beyond --only written_exercise")
    exercise = exercise_run.envelope(written_exercise(teacher, EXERCISE_SEEDS, progress))
    path, results = run.write({
        "budget": asdict(b),
        "teacher": {"name": "gpt2-tiny", "sha256": teacher.card["sha256"],
                    "val_perplexity": metrics.perplexity(teacher, val_blocks)},
        "n_blocks_per_student": b.steps * b.batch_size, "val_blocks": len(val_blocks),
        "compare": compare, "verdict": ch03.beyond_verdict(compare),
        "train_seconds": {name: statistics.mean(v) for name, v in seconds.items()},
        "teacher_writing_seconds": statistics.mean(writing),
        "written_exercise": exercise,
    }, out)
    print(f"results written to {path}")
    print(results["verdict"])
    for name, r in compare.items():
        print(f"{name + ':':<48} {r['mean']:.1f} ± {r['std']:.1f}  ({results['train_seconds'][name]:.0f} s)")
    print(f"teacher writing its corpus: {results['teacher_writing_seconds']:.0f} s; "
          f"wall seconds: {results['seconds']:.0f}")
    return results
