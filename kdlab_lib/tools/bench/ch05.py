"""``kdlab bench staged`` and ``staged-gpt2``: chapter 05 (``chapters.ch05_staged``) over several seeds.

Capacity gap (students of several widths, one teacher; one small student, teachers of
growing size), teacher -> assistant -> student against direct distillation for a few
chains, the cascade (prune + distill) family, and the per-class gap of the smallest
student. Writes ``data/results/staged.json`` (in quick mode: the cache) with the
command, git commit, seeds, budget and date beside the numbers.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ...chapters import ch05_staged as ch05
from ...core import metrics, models, store
from .ch01 import SEEDS

LIVE_SEEDS = tuple(range(5))   # notebook 05's live sweep is checked on each


def _chain_name(chain) -> str:
    return " -> ".join(["teacher", *(f"{w}-{w}" for w in chain)])


def bench_staged(out: Path | None = None, seeds=SEEDS, progress: bool = False, sweep_seeds: int = 2) -> dict:
    """All of chapter 05 at the classroom budget: the TA chains over ``seeds``, the two size
    sweeps over the first ``sweep_seeds`` of them, the cascade on the first seed."""
    run = store.BenchRun("staged", seeds)   # provenance: the code that ran, read before it runs
    b = ch05.budget()
    if len({c[-1] for c in b.chains}) != 1:
        raise ValueError("every chain of the bench must end in the same student width")
    teacher = models.load_teacher("mnist", device="cpu")
    data = ch05.transfer_set(b)
    targets = metrics.predict(teacher, data)             # shared by every student of the teacher
    sweep = tuple(seeds[:sweep_seeds])
    timings = {}

    t = time.perf_counter()
    students = ch05.capacity_gap_students(teacher, b, seeds=sweep, targets=targets, progress=progress)
    timings["capacity_gap_students"] = time.perf_counter() - t
    print("students:", {w: (students["scratch"][w], students["distilled"][w]) for w in students["scratch"]},
          flush=True)

    t = time.perf_counter()
    teachers = ch05.capacity_gap_teachers(b, seeds=sweep, extra_teachers={"shipped CNN": teacher},
                                        progress=progress)
    timings["capacity_gap_teachers"] = time.perf_counter() - t
    print("teachers:", teachers["student"], "scratch", teachers["scratch"], flush=True)

    t = time.perf_counter()
    chains, direct, scratch, per_class = {}, [], [], {"teacher": None, "direct": None}
    direct_t = []
    for i, chain in enumerate(b.chains):
        staged, assistants, chain_t = [], [], []
        for seed in seeds:
            r = ch05.teaching_assistant(teacher, b, chain, seed, targets=targets, progress=progress,
                                      with_scratch=i == 0)
            staged.append(r["errors"]["staged"])
            assistants.append([a["test_errors"] for a in r["assistants"]])
            chain_t.append(r["temperatures"]["chain"])
            if i == 0:   # direct and scratch depend only on the student's width and the seed
                direct.append(r["errors"]["direct"])
                direct_t.append(r["temperatures"]["direct"])
                scratch.append(r["errors"]["scratch"])
            gap = ch05.per_class_gap(r["logits"], r["labels"])
            for name in (("teacher", "direct", "staged") if i == 0 else ("staged",)):
                key = name if name != "staged" else _chain_name(chain)
                per_class[key] = [a + c for a, c in zip(per_class[key], gap[name])] if per_class.get(key) else gap[name]
        chains[_chain_name(chain)] = {"chain": list(chain), "staged": metrics.mean_std(staged),
                                      "assistants_test_errors": assistants, "temperatures": chain_t}
        print(f"{_chain_name(chain)}: staged {staged}, T per link {chain_t}", flush=True)
    timings["teaching_assistant"] = time.perf_counter() - t
    print(f"direct {direct} (T {direct_t}), scratch {scratch}", flush=True)

    t = time.perf_counter()
    start_model = ch05.train_student(b.cascade_width, data, b, seeds[0], targets, progress)
    cascades = {}
    for scope in ("global", "layer"):
        c = ch05.cascade(teacher, start_model, b, scope=scope, seed=seeds[0], targets=targets, progress=progress)
        cascades[scope] = c["rows"]
        print(f"cascade ({scope}):", [(r["nonzero"], r["test_errors"]) for r in c["rows"]], flush=True)
    timings["cascade"] = time.perf_counter() - t

    entries = {key: store.BenchRun("staged", LIVE_SEEDS, command=f"kdlab bench staged --only {key}")
               .envelope(run_entry(teacher, LIVE_SEEDS, progress))   # each carries its own envelope, as with --only
               for key, run_entry in ENTRIES.items()}

    path, results = run.write({
        "sweep_seeds": list(sweep), "budget": asdict(b),
        "teacher": {"name": "mnist", "sha256": teacher.card["sha256"], "params": models.n_params(teacher),
                    "test_errors": students["teacher_errors"]},
        "capacity_gap_students": students,
        "capacity_gap_teachers": teachers,
        "teaching_assistant": {"student_width": b.chains[0][-1], "direct": metrics.mean_std(direct),
                               "direct_temperatures": direct_t, "scratch": metrics.mean_std(scratch), "chains": chains,
                               "per_class_errors_summed_over_seeds": per_class},
        "cascade": {"start_width": b.cascade_width, "share": b.prune_share, "rounds": b.prune_rounds,
                    "teach": "parent", **cascades},
        "published": {"TAKD 2020 (CIFAR-10, accuracy %)": ch05.TAKD_2020},
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        **entries,
    }, out)
    print(f"results written to {path}")
    print(f"teacher test errors: {students['teacher_errors']}")
    for w in students["widths"]:
        k = str(w)
        print(f"width {w:>4}: scratch {students['scratch'][k]}, distilled {students['distilled'][k]} "
              f"at T = {students['temperature'][k]:g}, gain {students['gain'][k]:+.1f}")
    d = results["teaching_assistant"]["direct"]
    print(f"{b.chains[0][-1]}-{b.chains[0][-1]} student, direct: {d['mean']:.1f} ± {d['std']:.1f}")
    for name, c in chains.items():
        print(f"{name}: {c['staged']['mean']:.1f} ± {c['staged']['std']:.1f}")
    print(f"wall seconds: {results['seconds']:.0f}")
    return results


def _live_check(teacher, seeds, progress) -> dict:
    check = ch05.live_check(teacher, seeds, progress)
    print(f"live check over seeds {list(seeds)}: the hottest T hurt the smallest student on "
          f"{check['hot_hurts_smallest']}; distilled beat scratch {check['distilled_wins']}")
    return check


def _staging_check(teacher, seeds, progress) -> dict:
    check = ch05.staging_check(teacher, seeds, progress=progress)
    for t, row in check["summary"].items():
        print(f"T = {t}: direct {row['direct']['mean']:.1f}, staged " +
              ", ".join(f"via {w}-{w} {v['mean']:.1f} (won {row['staged_wins'][w]}/{len(seeds)})"
                        for w, v in row["staged"].items()), flush=True)
    return check


ENTRIES = {"live_check": _live_check,          # --only KEY: a five-seed check of one of notebook 05's live runs
           "staging_check": _staging_check}


def bench_only(key: str, out: Path | None = None, seeds=LIVE_SEEDS, progress: bool = False) -> dict:
    """``kdlab bench staged --only KEY``: notebook 05's live sweep (``live_check``) or the book's exercise 5
    (``staging_check``) over five seeds, stored with its own command, commit and date under ``KEY`` in the
    existing results file."""
    run = store.BenchRun("staged", seeds, command=f"kdlab bench staged --only {key}")
    check = ENTRIES[key](models.load_teacher("mnist", device="cpu"), seeds, progress)
    path, results = run.write_entry(key, check, out)
    print(f"results written to {path} (key {key})")
    return results


# ------------------------------------------------------ the GPT-2 family (exercise 5)

GPT_NAMES = ("teacher", "assistant", "direct", "staged", "scratch")


def bench_staged_gpt2(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """Chapter 05, exercise 5: gpt2-tiny (6 x 256) -> assistant (3 x 192) -> the 2 x 128 student, against
    teacher -> student directly and the student from scratch, over ``seeds``
    (``ch05_staged.teaching_assistant``). Every student gets the same budget; the
    assistant's training is reported as the staged student's extra cost. Writes
    ``data/results/staged-gpt2.json`` (in quick mode: the cache)."""
    run = store.BenchRun("staged-gpt2", seeds)   # provenance: the code that ran, read before it runs
    cb = ch05.gpt2_budget()
    teacher, tok, train_blocks, val_blocks, ranks = ch05.gpt2_data(ch05.gpt2_student_budget(cb))
    teacher_nll = metrics.token_nll(teacher, val_blocks)
    per_seed, gaps = [], []
    for seed in seeds:
        r = ch05.gpt2_teaching_assistant(teacher, train_blocks, val_blocks, cb, seed, ranks=ranks,
                                   teacher_nll=teacher_nll, progress=progress)
        per_seed.append({"seed": seed, "perplexity": r["perplexity"],
                         "train_seconds": {k: round(v, 1) for k, v in r["seconds"].items()}})
        gaps.append(r["frequency_gap"])
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["perplexity"].items()) +
              " | seconds " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()), flush=True)
    ppl = {name: metrics.mean_std([s["perplexity"][name] for s in per_seed]) for name in GPT_NAMES}
    secs = {name: metrics.mean_std([s["train_seconds"][name] for s in per_seed]) for name in ("scratch", "direct",
                                                                                        "assistant", "staged")}
    # mean over seeds of each bucket's mean loss (the positions are the same in every seed)
    gap_rows = [[rows[0][0], rows[0][1], *[sum(g[i][2 + j] for g in gaps) / len(gaps) for j in range(len(GPT_NAMES))]]
                for i, rows in enumerate(zip(*gaps))]
    values = lambda name: ppl[name]["values"]
    verdict = "\n".join([ch05.compare_verdict("staged (teacher -> assistant -> student)", values("staged"),
                                              "direct (teacher -> student)", values("direct"), unit="perplexity"),
                         ch05.compare_verdict("direct", values("direct"), "scratch", values("scratch"),
                                              unit="perplexity")])
    path, results = run.write({
        "budget": asdict(cb), "student_budget": asdict(ch05.gpt2_student_budget(cb)),
        "assistant_budget": asdict(ch05.gpt2_assistant_budget(cb)),
        "teacher": {"name": "gpt2-tiny", "sha256": teacher.card["sha256"], "val_perplexity": ppl["teacher"]["mean"]},
        "params": ch05.gpt2_params(cb, teacher), "val_blocks": len(val_blocks), "train_blocks": len(train_blocks),
        "perplexity": ppl, "per_seed": per_seed, "verdict": verdict,
        "train_seconds": secs,
        "cost_seconds": {"direct student": secs["direct"]["mean"],
                         "staged student + its assistant": secs["staged"]["mean"] + secs["assistant"]["mean"]},
        "frequency_gap": {"columns": ["bucket", "positions", *GPT_NAMES], "unit": "mean next-token loss (nats), "
                          "mean over seeds", "rows": gap_rows},
        "published": {"TAKD 2020 (CIFAR-10, accuracy %)": ch05.TAKD_2020},
    }, out)
    print(f"results written to {path}")
    print(f"params: {results['params']}")
    for name in GPT_NAMES:
        print(f"{name:>9}: perplexity {ppl[name]['mean']:.1f} ± {ppl[name]['std']:.1f}  {ppl[name]['values']}")
    print(verdict)
    print(f"wall seconds: {results['seconds']:.0f}")
    return results
