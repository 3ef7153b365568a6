"""The ``kdlab`` command: ``kdlab prepare``, ``kdlab distill``, ``kdlab cache-logits``, ``kdlab bench`` and
``kdlab grade``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PREPARE_STEPS = ("mnist-data", "mnist", "text-data", "tokenizers", "bert-tiny", "gpt2-tiny", "gpt2-wiki-student")


def _prepare(args) -> int:
    from . import prepare
    steps = args.only or list(PREPARE_STEPS)
    out = lambda step: Path(args.out) / step if args.out else None
    for step in steps:
        if step == "mnist-data":
            print(f"MNIST IDX files written to {prepare.make_mnist_data(out(step))}")
        elif step == "mnist":
            card = prepare.make_mnist_teacher(out(step), progress=not args.no_progress)
            print(f"MNIST teacher: {card['metrics']['test_errors']} test errors of 10,000 "
                  f"written to {out(step) or prepare.default_out(step)}")
        elif step == "text-data":
            print(f"Shakespeare, Wikipedia and Rotten Tomatoes text written to "
                  f"{prepare.make_text_data(out(step))}")
        elif step == "tokenizers":
            print(f"WordPiece and BPE tokenizers written to {prepare.make_tokenizers(out(step))}")
        elif step == "bert-tiny":
            card = prepare.make_bert_teacher(out(step), progress=not args.no_progress)
            print(f"BERT teacher: validation MLM accuracy {card['metrics']['val_mlm_accuracy']:.3f}, "
                  f"perplexity {card['metrics']['val_mlm_perplexity']:.1f}, written to "
                  f"{out(step) or prepare.default_out(step)}")
        elif step in prepare.GPT_RECIPES:
            card = prepare.make_gpt2_model(step, out(step), progress=not args.no_progress)
            print(f"{step}: held-out perplexity {card['metrics']['val_perplexity']:.1f}, "
                  f"{card['metrics']['params']:,} parameters, written to {out(step) or prepare.default_out(step)}")
    return 0


SEEDED_BENCHES = ("mnist", "bert", "gpt2", "gpt2-beyond", "self", "staged", "staged-gpt2", "eval")


ONLY = {"first_distillation": "mnist", "temperature_exercise": "mnist",   # --only KEY: the bench whose file holds it
        "live_check": "staged", "staging_check": "staged", "alternatives_exercise": "gpt2",
        "written_exercise": "gpt2-beyond", "layer_sets": "bert"}


def _bench(args) -> int:
    if args.only:
        owner = ONLY[args.only]
        if args.name != owner:
            raise SystemExit(f"--only {args.only} belongs to `kdlab bench {owner}`, not `{args.name}`")
        from .bench import ch01, ch02, ch03, ch05
        modules = {"mnist": ch01, "bert": ch02, "gpt2": ch03, "gpt2-beyond": ch03, "staged": ch05}
        modules[owner].bench_only(args.only, out=args.out)
    elif args.name in SEEDED_BENCHES:
        from .bench import SEEDED
        SEEDED[args.name](out=args.out, seeds=tuple(range(args.seeds)))
    elif args.name == "widgets":
        from .bench import widgets
        widgets.bench_widgets(out=args.out)   # JupyterLab + Debian's Chromium; several minutes
    elif args.name == "gpu":
        from .bench import gpu
        gpu.bench_gpu(out=args.out)   # without a GPU it says so, writes nothing, and exits 0
    elif args.name == "notebooks":
        from .bench import notebooks
        rows = notebooks.bench_notebooks(args.paths or None, out=args.out)
        return 1 if any(r["over_limit"] for r in rows) else 0
    return 0


def _distill(args) -> int:
    from ..scale import accelerate_distill
    metrics = accelerate_distill.run(args)
    print(accelerate_distill.summary(metrics))
    print(f"student and metrics.json written to {args.out}")
    return 0


def _cache_logits(args) -> int:
    from ..scale import accelerate_distill, logit_cache
    manifest = accelerate_distill.run_cache_logits(args)
    print(logit_cache.summary(manifest))
    print(f"written to {args.out} in {manifest['seconds']:.0f} s; train a student from it with "
          f"`kdlab distill --from-cache {args.out} --student ...`")
    return 0


def _grade(args) -> int:
    from . import grade
    results = grade.grade(args.submissions, timeout=args.timeout,
                          progress=lambda r: print(f"graded {r.path}: {r.status}", flush=True))
    print()
    print(grade.to_text(results, args.timeout))
    if args.out:
        print(f"HTML report written to {grade.write_html(results, args.out, args.timeout)}")
    if args.csv:
        print(f"CSV written to {grade.write_csv(results, args.csv)}")
    return 0   # a bad submission is a row of the report, not a failure of the command


def _plan(args) -> int:
    from ..core import store
    from . import plan
    print(plan.plans_markdown(store.read_results("notebooks", args.results)))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kdlab", description="kdlab: a teaching lab for knowledge distillation")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="re-create the shipped data and teachers")
    p.add_argument("--only", action="append", choices=PREPARE_STEPS,
                   help="run only this step (repeatable); default: all")
    p.add_argument("--out", default=None, help="write under this directory instead of data/ "
                                             "(in quick mode the default is the cache)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_prepare)
    d = sub.add_parser("distill", help="token-level distillation of a causal LM on Hugging Face Accelerate "
                                       "(runs under `accelerate launch` too)")
    from ..scale.accelerate_distill import add_arguments
    add_arguments(d)
    d.set_defaults(func=_distill)
    c = sub.add_parser("cache-logits", help="run a teacher once over a corpus and store its top-k logits "
                                            "for `kdlab distill --from-cache`")
    from ..scale.accelerate_distill import add_cache_arguments
    add_cache_arguments(c)
    c.set_defaults(func=_cache_logits)
    b = sub.add_parser("bench", help="run a chapter's measurements and write data/results/NAME.json")
    b.add_argument("name", choices=[*SEEDED_BENCHES, "widgets", "gpu", "notebooks"])
    b.add_argument("paths", nargs="*", help="for `notebooks`: which ones (default: all)")
    b.add_argument("--out", default=None, help="results file (default: data/results/NAME.json; "
                                              "in quick mode, the cache)")
    b.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    b.add_argument("--only", choices=sorted(ONLY), default=None,
                   help="re-run one five-seed check and update that entry of the results file: "
                        "mnist first_distillation (notebook 00, ~30 s), mnist temperature_exercise "
                        "(notebook 01, ~1 minute), staged live_check (notebook 05, ~2 minutes), "
                        "staged staging_check (notebook 05's exercise, ~3 minutes), "
                        "gpt2 alternatives_exercise (notebook 03's exercise, ~20 minutes), "
                        "gpt2-beyond written_exercise (notebook 03b's exercise, ~15 minutes), "
                        "bert layer_sets (which layers chapter 02's student copies, ~15 minutes)")
    b.set_defaults(func=_bench)
    g = sub.add_parser("grade", help="run submitted notebooks in quick mode and report each exercise's checker "
                                     "verdicts (formative)")
    g.add_argument("submissions", nargs="+", metavar="SUBMISSION.ipynb")
    g.add_argument("--out", default=None, help="write the HTML report here")
    g.add_argument("--csv", default=None, help="write the report as CSV here")
    g.add_argument("--timeout", type=float, default=600.0,
                   help="seconds of cell execution per notebook before its kernel is killed (default 600)")
    g.set_defaults(func=_grade)
    pl = sub.add_parser("plan", help="print the README's lesson plans, their minutes read from "
                                     "data/results/notebooks.json (kdlab bench notebooks)")
    pl.add_argument("--results", default=None, help="another notebooks results file")
    pl.set_defaults(func=_plan)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
