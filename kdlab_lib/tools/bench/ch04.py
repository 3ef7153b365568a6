"""``kdlab bench self``: chapter 04 (``chapters.ch04_self_distillation``) over several seeds.

Writes ``data/results/self.json`` (in quick mode: the cache).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ...chapters import ch03_gpt2 as ch03
from ...chapters import ch04_self_distillation as ch04
from ...core import config, store
from .ch01 import SEEDS


def bench_self(out: Path | None = None, seeds=SEEDS, progress: bool = False, lm: bool = True) -> dict:
    """Chapter 04: born-again generations (``ch04_self_distillation``) on MNIST over ``seeds``, with clean
    labels and with ``budget.noise`` of the training labels flipped; then born-again generations of
    the tiny GPT-2 student on Shakespeare (first seed, chapter 03's budget)."""
    run = store.BenchRun("self", seeds)   # provenance: the code that ran, read before it runs
    b = ch04.budget()
    runs = {"clean": [], "noisy": []}
    for seed in seeds:
        for name, noise in (("clean", 0.0), ("noisy", b.noise)):
            r = ch04.born_again(b, seed, noise=noise, progress=progress)
            runs[name].append(r)
            print(f"seed {seed} {name}: errors " + " -> ".join(str(x["test_errors"]) for x in r["rows"]) +
                  "; ensemble " + " -> ".join(str(x["ensemble_errors"]) for x in r["rows"]), flush=True)
    mnist = {name: {"summary": ch04.summarise(rs),
                    "per_seed": [{"seed": r["seed"], "flipped": r["flipped"], "rows": r["rows"]} for r in rs]}
             for name, rs in runs.items()}
    for name in mnist:
        mnist[name]["verdict"] = ch04.self_verdict(mnist[name]["summary"])
    results = {
        "budget": asdict(b), "mnist": mnist,
        "published": ch04.FURLANELLO_2018,
    }
    if lm:
        teacher, tok = ch03.load()
        gb = ch03.budget()
        train_blocks, val_blocks = ch03.shakespeare_blocks(tok, "train", gb), ch03.shakespeare_blocks(tok, "val", gb)
        r = ch04.born_again_lm(teacher, train_blocks, val_blocks, gb, generations=config.budget(3, 2),
                             seed=seeds[0], progress=progress)
        results["gpt2"] = {"seed": seeds[0], "budget": asdict(gb), "val_blocks": len(val_blocks),
                           "rows": r["rows"]}
        print("gpt2: perplexity " + " -> ".join(f"{x['perplexity']:.1f}" for x in r["rows"]) +
              "; ensemble " + " -> ".join(f"{x['ensemble_perplexity']:.1f}" for x in r["rows"]), flush=True)
    path, results = run.write(results, out)
    print(f"results written to {path}")
    for name in mnist:
        print(f"{name}: {mnist[name]['verdict']}")
    print(f"wall seconds: {results['seconds']:.0f}")
    return results
