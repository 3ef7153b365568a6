"""``kdlab bench``: the measurements too costly for a classroom run.

``kdlab bench mnist`` runs chapter 01's experiment (3 seeds, temperature and
alpha sweeps, the omitted-3 experiment) and writes ``data/results/mnist.json``
with the command, git commit, seeds, budget and date beside the numbers.
``kdlab bench bert`` (chapter 02: ablations and the downstream sentiment task) and
``kdlab bench gpt2`` (chapter 03: scratch / fine-tuned / distilled students, the loss,
temperature and top-k sweeps) do the same for their chapters, and ``kdlab bench gpt2-beyond``
(chapter 03, section 10: sequence-level and on-policy KD) for the rest of chapter 03.
In quick mode it writes to the cache instead, so tests never overwrite the
shipped results.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from . import config, experiments, metrics, models

SEEDS = (0, 1, 2)
TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)
ALPHAS = (0.0, 0.1, 0.5, 0.9)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_out(name: str) -> Path:
    if config.QUICK:
        return config.cache_dir() / "results" / f"{name}-quick.json"
    return config.RESULTS_DIR / f"{name}.json"


def write_json(data: dict, path: Path) -> Path:
    """Atomic write: a reader never sees half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)   # mkstemp makes it private; a results file is for everyone to read
    os.replace(tmp, path)
    return path


def read_results(name: str, path: Path | None = None) -> dict:
    """A results file written by ``kdlab bench NAME``, with a clear error if it is missing."""
    path = Path(path or config.RESULTS_DIR / f"{name}.json")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; create it with `kdlab bench {name}`")
    return json.loads(path.read_text())


def bench_mnist(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    config.set_threads()
    start, commit = time.perf_counter(), git_commit()  # the code that ran, read before it runs
    teacher = models.load_teacher("mnist", device="cpu")
    b = experiments.budget()
    small = experiments.budget(hidden=(30, 30), lr=3e-3)
    targets = experiments.teacher_targets(teacher, experiments.transfer_set(b))  # shared by every student
    per_seed = []
    for seed in seeds:
        r = experiments.scratch_vs_distilled(teacher, b, seed=seed, progress=progress, targets=targets)
        per_seed.append({"seed": seed, **{k: v for k, v in r["errors"].items()},
                         "gap_closed": r["gap_closed"]})
        print(f"seed {seed}: teacher {r['errors']['teacher']}, scratch {r['errors']['scratch']}, "
              f"distilled {r['errors']['distilled']}", flush=True)
    sweep_big = experiments.temperature_sweep(teacher, b, TEMPERATURES, progress=progress, targets=targets)
    print(f"T sweep 800-800: {sweep_big}", flush=True)
    sweep_small = experiments.temperature_sweep(teacher, small, TEMPERATURES, progress=progress,
                                                targets=targets)
    print(f"T sweep 30-30: {sweep_small}", flush=True)
    scratch_small = experiments.test_errors(
        experiments.train_scratch(small, experiments.transfer_set(small), 0, progress), small)
    alphas = experiments.alpha_sweep(teacher, b, ALPHAS, progress=progress, targets=targets)
    print(f"alpha sweep 800-800: {alphas}", flush=True)
    omit = experiments.omit_class(teacher, b, cls=3, progress=progress, targets=targets)
    teacher_errors = per_seed[0]["teacher"]
    scratch_mean = statistics.mean(r["scratch"] for r in per_seed)
    distilled_mean = statistics.mean(r["distilled"] for r in per_seed)
    seconds = time.perf_counter() - start
    results = {
        "command": "kdlab bench mnist", "git_commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": config.QUICK,
        "seeds": list(seeds), "budget": asdict(b), "budget_30_30": asdict(small),
        "teacher": {"name": "mnist", "sha256": teacher.card["sha256"], "test_errors": teacher_errors},
        "main": {"per_seed": per_seed, "teacher_errors": teacher_errors, "scratch_mean": scratch_mean,
                 "distilled_mean": distilled_mean,
                 "gap_closed_mean": (scratch_mean - distilled_mean) / (scratch_mean - teacher_errors)
                 if scratch_mean != teacher_errors else None,
                 "distilled_beats_scratch_every_seed": all(r["distilled"] < r["scratch"] for r in per_seed)},
        "temperature_sweep": {"800-800": _keys(sweep_big), "30-30": _keys(sweep_small),
                              "30-30 scratch": scratch_small},
        "alpha_sweep": {"800-800": _keys(alphas), "temperature": b.temperature},
        "omit3": {k: omit[k] for k in ("class", "chosen_bias", "transfer_size", "before", "after")},
        "published": experiments.HINTON_2015,
        "seconds": round(seconds, 1),
        "threads": config.set_threads(),
    }
    path = write_json(results, out or default_out("mnist"))
    o = results["omit3"]
    print(f"results written to {path}")
    print(f"teacher test errors:               {teacher_errors}")
    print(f"scratch 800-800 (mean of {len(seeds)} seeds): {scratch_mean:.1f}")
    print(f"distilled 800-800 (mean of {len(seeds)}):     {distilled_mean:.1f}")
    print(f"gap closed by distillation:         {results['main']['gap_closed_mean']:.0%}"
          if results["main"]["gap_closed_mean"] is not None else "gap closed: n/a")
    print(f"3s right before / after bias fix:   {o['before']['class_correct'] / o['before']['class_total']:.1%}"
          f" / {o['after']['class_correct'] / o['after']['class_total']:.1%} (bias {o['chosen_bias']:g})")
    print(f"wall seconds:                       {seconds:.0f}")
    return results


def _keys(d: dict) -> dict:
    return {f"{k:g}": v for k, v in d.items()}


# ------------------------------------------------------------------ notebooks

def _peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a process, in MB (Linux; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_notebook(path: Path, timeout: int = 1800) -> dict:
    """Execute a notebook top to bottom in a fresh kernel; wall seconds and the kernel's peak memory.

    The kernel inherits this process's environment, so ``KDLAB_QUICK`` decides the mode.
    Peak memory is sampled after every cell (VmHWM never decreases, so the last sample is the peak).
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    samples: list[tuple[int, float]] = []
    started: dict[int, float] = {}
    durations: dict[int, float] = {}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})

    def sample(cell, cell_index, **_):
        durations[cell_index] = time.perf_counter() - started.get(cell_index, time.perf_counter())
        pid = client.km.provisioner.process.pid if client.km and client.km.provisioner else None
        mb = _peak_rss_mb(pid) if pid else None
        if mb is not None:
            samples.append((cell_index, mb))

    client.on_cell_start = lambda cell, cell_index, **_: started.__setitem__(cell_index, time.perf_counter())
    client.on_cell_executed = sample
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    peak = max((mb for _, mb in samples), default=None)
    jumps = sorted(((b[1] - a[1], b[0]) for a, b in zip(samples, samples[1:])), reverse=True)[:3]
    return {"notebook": str(path.relative_to(config.REPO_ROOT) if path.is_absolute() else path),
            "seconds": round(seconds, 1), "peak_mb": round(peak, 1) if peak else None,
            "biggest_cells": [{"cell": i, "added_mb": round(d, 1)} for d, i in jumps if d > 0],
            "slowest_cells": [{"cell": i, "seconds": round(t, 1)} for i, t in
                              sorted(durations.items(), key=lambda kv: -kv[1])[:3]]}


def bench_notebooks(paths=None, out: Path | None = None, limit_mb: float = 1500.0) -> list[dict]:
    """Run every notebook (and solution) and print seconds and peak memory; flag > ``limit_mb``."""
    nb_dir = config.REPO_ROOT / "notebooks"
    paths = [Path(p) for p in paths] if paths else sorted(nb_dir.glob("*.ipynb")) + sorted(
        (nb_dir / "solutions").glob("*.ipynb"))
    rows = []
    mode = "quick" if config.QUICK else "classroom"
    print(f"executing {len(paths)} notebooks in {mode} mode")
    for p in paths:
        r = run_notebook(p)
        r["over_limit"] = r["peak_mb"] is not None and r["peak_mb"] > limit_mb
        rows.append(r)
        flag = "  OVER the memory limit" if r["over_limit"] else ""
        print(f"{r['notebook']:60s} {r['seconds']:7.1f} s  {r['peak_mb'] or float('nan'):7.0f} MB{flag}",
              flush=True)
    if out:
        write_json({"command": "kdlab bench notebooks", "git_commit": git_commit(),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "mode": mode,
                    "limit_mb": limit_mb, "notebooks": rows}, out)
    return rows


# ---------------------------------------------------------------- chapter 02

def _mean_std(values) -> dict:
    values = [float(v) for v in values]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def ablation_verdict(ablations: dict, reference: str = "full triple loss") -> str:
    """One sentence per variant: is its difference from the reference larger than the noise?"""
    ref = ablations[reference]
    lines = []
    for name, r in ablations.items():
        if name == reference:
            continue
        diff = r["mean"] - ref["mean"]
        noise = 2 * max(ref["std"], r["std"], 1e-9)
        size = "larger than" if abs(diff) > noise else "within"
        lines.append(f"{name}: {diff:+.4f} accuracy, {size} the noise (2 std = {noise:.4f})")
    return "\n".join(lines)


def bench_bert(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    from . import experiments_bert as eb
    config.set_threads()
    start, commit = time.perf_counter(), git_commit()
    teacher, tok = eb.load()
    b = eb.budget()
    train_blocks = eb.mlm_blocks(tok, "train")
    val_blocks = eb.mlm_blocks(tok, "val", config.budget(400, 8))
    teacher_score = eb.mlm_score(teacher, tok, val_blocks)
    ablations, students = {}, {}  # the full-triple-loss students go on to the sentiment task
    for name in eb.ABLATIONS:
        scores = []
        for seed in seeds:
            score, student = eb.ablation(teacher, tok, train_blocks, val_blocks, b, name, seed, progress)
            scores.append(score["accuracy"])
            if name == "full triple loss":
                students[seed] = student
        ablations[name] = _mean_std(scores)
        print(f"ablation {name}: {ablations[name]['mean']:.4f} ± {ablations[name]['std']:.4f}", flush=True)
    n_quick = config.budget(None, 64)  # every snippet in a real run, 64 per split in quick mode
    db = eb.budget(n_sentiment=n_quick, sentiment_steps=config.budget(800, 2))  # 2.5 passes over 10,202 snippets
    train_s, val_s, test_s = (eb.sentiment_tensors(tok, split, db.max_len, n_quick)
                              for split in ("train", "val", "test"))
    bow = eb.bow_logistic_regression(train_s, val_s, tok)
    bow_acc = metrics.accuracy(bow["model"](test_s[0]), test_s[2])
    acc_t, acc_s = [], []
    for seed in seeds:
        t_clf = eb.fine_tune(teacher, train_s, db, seed, progress)
        s_clf = eb.fine_tune(students[seed], train_s, db, seed, progress)
        acc_t.append(eb.accuracy(t_clf, test_s))
        acc_s.append(eb.accuracy(s_clf, test_s))
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
    downstream["verdict"] = eb.downstream_verdict(
        bow_acc, downstream["teacher, test accuracy (mean)"], downstream["student, test accuracy (mean)"],
        downstream["parameters (student / teacher)"], downstream["speed-up (teacher time / student time)"])
    seconds = time.perf_counter() - start
    results = {
        "command": "kdlab bench bert", "git_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": config.QUICK, "seeds": list(seeds), "budget": asdict(b),
        "teacher": {"name": "bert-tiny", "sha256": teacher.card["sha256"],
                    "val_mlm_accuracy": teacher_score["accuracy"], "val_mlm_perplexity": teacher_score["perplexity"]},
        "student_val_mlm_accuracy": ablations["full triple loss"], "val_blocks": len(val_blocks),
        "ablations": ablations, "verdict": ablation_verdict(ablations), "downstream": downstream,
        "published": eb.SANH_2019, "seconds": round(seconds, 1), "threads": config.set_threads(),
    }
    path = write_json(results, out or default_out("bert"))
    print(f"results written to {path}")
    print(results["verdict"])
    print(f"teacher / student val MLM accuracy:   {teacher_score['accuracy']:.4f} / {ablations['full triple loss']['mean']:.4f}")
    print(f"sentiment teacher / student / BoW:    {statistics.mean(acc_t):.4f} / {statistics.mean(acc_s):.4f} / {bow_acc:.4f}")
    print(f"retention {downstream['accuracy retained (student / teacher)']:.1%}, parameters "
          f"{downstream['parameters (student / teacher)']:.0%}, speed-up {downstream['speed-up (teacher time / student time)']:.2f}x")
    print(f"wall seconds:                         {seconds:.0f}")
    return results


GPT_TEMPERATURES = (1.0, 2.0, 4.0, 10.0, 20.0)
GPT_TOP_K = (1, 5, 20, 100)


def gpt_verdict(compare: dict) -> str:
    """Chapter 03's targets read against the measured mean perplexities (lower is better)."""
    ppl = {name: r["mean"] for name, r in compare.items()}
    scratch, tuned = ppl["scratch (hard labels)"], ppl["pretrained on wiki, fine-tuned (hard labels)"]
    kd, both = ppl["distilled (forward KL)"], ppl["pretrained on wiki, then distilled"]
    cut = 1 - kd / scratch
    return "\n".join([
        f"distilled vs scratch: {kd:.1f} vs {scratch:.1f} perplexity, {cut:.0%} lower "
        f"(target: at least 15% lower): {'met' if cut >= 0.15 else 'NOT met'}",
        f"pretrained-then-distilled {both:.1f} vs scratch {scratch:.1f} and fine-tuned {tuned:.1f}: "
        f"{'beats both' if both < min(scratch, tuned) else 'does NOT beat both'}"])


def bench_gpt2(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """Chapter 03: the four students over ``seeds``; then the loss, temperature and top-k sweeps on the
    first seed, as one lockstep group sharing its forward-KL / T = 1 / full-logit student."""
    from . import experiments_gpt as eg
    config.set_threads()
    start, commit = time.perf_counter(), git_commit()
    teacher, tok = eg.load()
    pretrained = models.load_teacher("gpt2-wiki-student", device="cpu")
    b = eg.budget()
    train_blocks, val_blocks = eg.shakespeare_blocks(tok, "train", b), eg.shakespeare_blocks(tok, "val", b)
    teacher_ppl = metrics.perplexity(teacher, val_blocks)
    per_seed = {name: [] for name in eg.VARIANTS}
    for seed in seeds:
        for name, r in eg.compare_students(teacher, pretrained, train_blocks, val_blocks, b, seed, progress).items():
            per_seed[name].append(r["perplexity"])
        print(f"seed {seed}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in per_seed.items()), flush=True)
    compare = {name: _mean_std(v) for name, v in per_seed.items()}
    # the sweeps: one lockstep group of students (one teacher forward per step serves them all),
    # sharing the forward-KL, T = 1, full-logit anchor
    settings = {"forward KL": {}, "reverse KL": {"loss": "reverse"}, "JSD (beta 0.5)": {"loss": "jsd", "beta": 0.5}}
    settings |= {f"T={t:g}": {"temperature": t} for t in GPT_TEMPERATURES if t != 1.0}
    settings |= {f"top-{k}": {"top_k": k} for k in GPT_TOP_K}
    ppl = eg.sweep_students(teacher, train_blocks, val_blocks, b, settings, seeds[0], progress)
    objectives = {name: ppl[name] for name in ("forward KL", "reverse KL", "JSD (beta 0.5)")}
    temps = {t: ppl["forward KL" if t == 1.0 else f"T={t:g}"] for t in GPT_TEMPERATURES}
    topk = {"full": ppl["forward KL"]} | {f"{k}": ppl[f"top-{k}"] for k in GPT_TOP_K}
    print(f"sweeps (seed {seeds[0]}): {ppl}", flush=True)
    seconds = time.perf_counter() - start
    results = {
        "command": "kdlab bench gpt2", "git_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": config.QUICK, "seeds": list(seeds), "budget": asdict(b),
        "teacher": {"name": "gpt2-tiny", "sha256": teacher.card["sha256"], "val_perplexity": teacher_ppl,
                    "params": models.n_params(teacher)},
        "student_params": models.n_params(eg.new_student_like(teacher, b)), "val_blocks": len(val_blocks),
        "compare": compare, "verdict": gpt_verdict(compare),
        "objectives": objectives, "temperature_sweep": _keys(temps),
        "topk_sweep": topk,
        "storage": {"lab vocabulary": eg.logit_storage(tok.vocab_size),
                    "GPT-2 vocabulary": eg.logit_storage(50_257)},
        "seconds": round(seconds, 1), "threads": config.set_threads(),
    }
    path = write_json(results, out or default_out("gpt2"))
    print(f"results written to {path}")
    print(results["verdict"])
    print(f"teacher held-out perplexity:  {teacher_ppl:.1f}")
    for name, r in compare.items():
        print(f"{name + ':':<46} {r['mean']:.1f} ± {r['std']:.1f}")
    print(f"wall seconds:                 {seconds:.0f}")
    return results


def beyond_verdict(compare: dict) -> str:
    """How sequence-level and on-policy KD rank against token-level KD and human text, in words."""
    m = {name: r["mean"] for name, r in compare.items()}
    human, seq, token = (m["human-written text (hard labels)"], m["teacher-written text (sequence-level KD)"],
                         m["token-level KD (forward KL)"])
    best = min(m, key=m.get)
    return (f"teacher-written text {'beats' if seq < human else 'does not beat'} the same number of human-written "
            f"tokens ({seq:.1f} vs {human:.1f}); token-level KD reaches {token:.1f}; best: {best} ({m[best]:.1f})")


def bench_gpt2_beyond(out: Path | None = None, seeds=SEEDS, progress: bool = False) -> dict:
    """Chapter 03, section 10: sequence-level and on-policy KD beside token-level KD and plain
    training on the same number of blocks (``experiments_gpt.beyond_logits``), over ``seeds``."""
    from . import experiments_gpt as eg
    config.set_threads()
    start, commit = time.perf_counter(), git_commit()
    teacher, tok = eg.load()
    b = eg.budget()
    train_blocks, val_blocks = eg.shakespeare_blocks(tok, "train", b), eg.shakespeare_blocks(tok, "val", b)
    per_seed, seconds, writing = {name: [] for name in eg.BEYOND}, {name: [] for name in eg.BEYOND}, []
    for seed in seeds:
        r = eg.beyond_logits(teacher, train_blocks, val_blocks, b, seed, progress=progress)
        writing.append(r.pop("teacher writing seconds"))
        for name, v in r.items():
            per_seed[name].append(v["perplexity"])
            seconds[name].append(v["seconds"])
        print(f"seed {seed}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in per_seed.items()), flush=True)
    compare = {name: _mean_std(v) for name, v in per_seed.items()}
    total = time.perf_counter() - start
    results = {
        "command": "kdlab bench gpt2-beyond", "git_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": config.QUICK, "seeds": list(seeds), "budget": asdict(b),
        "teacher": {"name": "gpt2-tiny", "sha256": teacher.card["sha256"],
                    "val_perplexity": metrics.perplexity(teacher, val_blocks)},
        "n_blocks_per_student": b.steps * b.batch_size, "val_blocks": len(val_blocks),
        "compare": compare, "verdict": beyond_verdict(compare),
        "train_seconds": {name: statistics.mean(v) for name, v in seconds.items()},
        "teacher_writing_seconds": statistics.mean(writing),
        "seconds": round(total, 1), "threads": config.set_threads(),
    }
    path = write_json(results, out or default_out("gpt2-beyond"))
    print(f"results written to {path}")
    print(results["verdict"])
    for name, r in compare.items():
        print(f"{name + ':':<48} {r['mean']:.1f} ± {r['std']:.1f}  ({results['train_seconds'][name]:.0f} s)")
    print(f"teacher writing its corpus: {results['teacher_writing_seconds']:.0f} s; wall seconds: {total:.0f}")
    return results


# ------------------------------------------------------------ self-distillation

def self_verdict(summary: dict) -> str:
    """Does the last born-again generation beat generation 0, and by more than the spread over seeds?"""
    rows = summary["per_generation"]
    first, last = rows[0]["test_errors"], rows[-1]["test_errors"]
    diff = first["mean"] - last["mean"]
    noise = max(first["std"], last["std"])
    word = "fewer" if diff > 0 else "more"
    clear = abs(diff) > noise
    return (f"generation {len(rows) - 1} makes {abs(diff):.1f} {word} test errors than generation 0 "
            f"({last['mean']:.1f} vs {first['mean']:.1f}); the spread over seeds is {noise:.1f}, so the "
            f"difference is {'larger' if clear else 'not larger'} than the noise")


def bench_self(out: Path | None = None, seeds=SEEDS, progress: bool = False, lm: bool = True) -> dict:
    """Chapter 04: born-again generations (``experiments_self``) on MNIST over ``seeds``, with clean
    labels and with ``budget.noise`` of the training labels flipped; then born-again generations of
    the tiny GPT-2 student on Shakespeare (first seed, chapter 03's budget)."""
    from . import experiments_gpt as eg
    from . import experiments_self as es
    config.set_threads()
    start, commit = time.perf_counter(), git_commit()
    b = es.budget()
    runs = {"clean": [], "noisy": []}
    for seed in seeds:
        for name, noise in (("clean", 0.0), ("noisy", b.noise)):
            r = es.born_again(b, seed, noise=noise, progress=progress)
            runs[name].append(r)
            print(f"seed {seed} {name}: errors " + " -> ".join(str(x["test_errors"]) for x in r["rows"]) +
                  "; ensemble " + " -> ".join(str(x["ensemble_errors"]) for x in r["rows"]), flush=True)
    mnist = {name: {"summary": es.summarise(rs),
                    "per_seed": [{"seed": r["seed"], "flipped": r["flipped"], "rows": r["rows"]} for r in rs]}
             for name, rs in runs.items()}
    for name in mnist:
        mnist[name]["verdict"] = self_verdict(mnist[name]["summary"])
    results = {
        "command": "kdlab bench self", "git_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": config.QUICK, "seeds": list(seeds), "budget": asdict(b), "mnist": mnist,
        "published": es.FURLANELLO_2018,
    }
    if lm:
        teacher, tok = eg.load()
        gb = eg.budget()
        train_blocks, val_blocks = eg.shakespeare_blocks(tok, "train", gb), eg.shakespeare_blocks(tok, "val", gb)
        r = es.born_again_lm(teacher, train_blocks, val_blocks, gb, generations=config.budget(3, 2),
                             seed=seeds[0], progress=progress)
        results["gpt2"] = {"seed": seeds[0], "budget": asdict(gb), "val_blocks": len(val_blocks),
                           "rows": r["rows"]}
        print("gpt2: perplexity " + " -> ".join(f"{x['perplexity']:.1f}" for x in r["rows"]) +
              "; ensemble " + " -> ".join(f"{x['ensemble_perplexity']:.1f}" for x in r["rows"]), flush=True)
    seconds = time.perf_counter() - start
    results["seconds"] = round(seconds, 1)
    results["threads"] = config.set_threads()
    path = write_json(results, out or default_out("self"))
    print(f"results written to {path}")
    for name in mnist:
        print(f"{name}: {mnist[name]['verdict']}")
    print(f"wall seconds: {seconds:.0f}")
    return results
