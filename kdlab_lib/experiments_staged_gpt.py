"""Chapter 05, exercise 5: a teaching-assistant chain for the tiny GPT-2 family on Shakespeare.

The shipped teacher ``gpt2-tiny`` (6 layers x 256, 5.8M parameters) -> a teaching assistant
(3 layers x 192, 2.1M) -> chapter 03's student (2 layers x 128, 0.94M), against the same
student distilled from the teacher directly and trained from scratch (TAKD, Mirzadeh et al. 2020).

Why 3 x 192: its parameter count is close to the geometric mean of the teacher's and the
student's (sqrt(5.82M x 0.94M) = 2.34M), the "halfway on a log scale" point TAKD found to
work well; depth and width both sit between the two ends (head size 64, like both ends).

Every student of one seed starts from the same random weights and sees the same batches
(``train_text``'s batches are seeded by the config's seed), so direct, staged and scratch
differ only in what they learn from. The student's budget is the same in all three; the
assistant's own training is extra cost for the staged student, measured and reported apart.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from . import config, metrics, models, text, train_text
from . import experiments_gpt as eg


@dataclass
class ChainBudget:
    student_steps: int = 150       # each 2 x 128 student (scratch, direct, staged); chapter 03's bench: 300
    assistant_steps: int = 300     # the assistant, distilled from the teacher (its cost is reported apart)
    assistant_layers: int = 3      # between the teacher's 6 and the student's 2
    assistant_hidden: int = 192    # between 256 and 128; 2.1M parameters, near the geometric mean
    assistant_heads: int = 3       # head size 64, as in the teacher (256 / 4) and the student (128 / 2)


def budget(**overrides) -> ChainBudget:
    """The bench budget, or a tiny one in quick mode (``KDLAB_QUICK=1``)."""
    quick = ChainBudget(student_steps=2, assistant_steps=2, assistant_layers=2, assistant_hidden=48,
                        assistant_heads=3)
    return replace(config.budget(ChainBudget(), quick), **overrides)


def student_budget(cb: ChainBudget) -> eg.GptBudget:
    """The 2 x 128 student's ``GptBudget`` (chapter 03's, with ``cb.student_steps`` steps)."""
    return eg.budget(steps=cb.student_steps)


def assistant_budget(cb: ChainBudget) -> eg.GptBudget:
    """The assistant's ``GptBudget``: the student's data, batch and learning rate, its own size and steps."""
    return replace(student_budget(cb), layers=cb.assistant_layers, hidden=cb.assistant_hidden,
                   heads=cb.assistant_heads, steps=cb.assistant_steps)


def distill_chain(teacher, budgets, train_blocks: torch.Tensor, seed: int = 0, progress: bool = False) -> list:
    """Distill a chain of GPT-2 students: ``budgets[0]``'s model from ``teacher``, ``budgets[1]``'s
    from that model, and so on, each with ``train_text.distill_clm`` (token-level forward KL). Each
    stage learns from the stage before it, never from the teacher directly. Returns the models."""
    if not budgets:
        raise ValueError("budgets must list at least one stage (the student's GptBudget)")
    previous, chain = teacher, []
    for i, b in enumerate(budgets):
        model = eg.new_student_like(teacher, b, seed)
        train_text.distill_clm(model, previous, train_blocks, eg.token_config(b, seed), progress=progress,
                               desc=f"stage {i + 1} ({b.layers}x{b.hidden})")
        chain.append(model.eval())
        previous = model   # the next stage matches this model's next-token distributions
    return chain


def teaching_assistant(teacher, train_blocks: torch.Tensor, val_blocks: torch.Tensor, cb: ChainBudget,
                       seed: int = 0, *, ranks: torch.Tensor | None = None, teacher_nll: dict | None = None,
                       progress: bool = False) -> dict:
    """teacher -> assistant -> student against teacher -> student and the student from scratch, one seed.

    Returns ``{"perplexity": {name: ...}, "seconds": {name: training seconds}, "frequency_gap": rows,
    "models": {...}}`` for names teacher, assistant, direct, staged, scratch; the frequency-gap rows
    (``experiments_gpt.frequency_gap``: mean next-token loss per bucket of the target token's
    frequency rank) need ``ranks`` (``text.token_ranks`` of the training blocks).
    """
    sb, ab = student_budget(cb), assistant_budget(cb)
    seconds = {}
    start = time.perf_counter()
    scratch = eg.new_student_like(teacher, sb, seed)
    train_text.fit_clm(scratch, train_blocks, eg.token_config(sb, seed), progress=progress, desc="scratch")
    seconds["scratch"] = time.perf_counter() - start
    start = time.perf_counter()
    (direct,) = distill_chain(teacher, [sb], train_blocks, seed, progress)
    seconds["direct"] = time.perf_counter() - start
    start = time.perf_counter()
    (assistant,) = distill_chain(teacher, [ab], train_blocks, seed, progress)
    seconds["assistant"] = time.perf_counter() - start
    start = time.perf_counter()
    (staged,) = distill_chain(assistant, [sb], train_blocks, seed, progress)   # the student sees only the assistant
    seconds["staged"] = time.perf_counter() - start
    named = {"teacher": teacher, "assistant": assistant, "direct": direct, "staged": staged, "scratch": scratch.eval()}
    scored = {name: (teacher_nll if name == "teacher" and teacher_nll is not None else metrics.token_nll(m, val_blocks))
              for name, m in named.items()}
    out = {"seed": seed, "perplexity": {name: math.exp(float(s["nll"].mean())) for name, s in scored.items()},
           "seconds": seconds, "models": named}
    if ranks is not None:
        out["frequency_gap"] = eg.frequency_gap(scored, ranks)
    return out


def data(b: eg.GptBudget | None = None) -> tuple:
    """``(teacher, tokenizer, train blocks, val blocks, token frequency ranks of the train blocks)``."""
    teacher, tok = eg.load()
    b = b or student_budget(budget())
    train_blocks, val_blocks = eg.shakespeare_blocks(tok, "train", b), eg.shakespeare_blocks(tok, "val", b)
    return teacher, tok, train_blocks, val_blocks, text.token_ranks(train_blocks, teacher.config.vocab_size)


def params(cb: ChainBudget, teacher) -> dict:
    """Parameter counts of teacher, assistant and student."""
    return {"teacher": models.n_params(teacher),
            "assistant": models.n_params(eg.new_student_like(teacher, assistant_budget(cb))),
            "student": models.n_params(eg.new_student_like(teacher, student_budget(cb)))}


def compare_verdict(name: str, values, reference: str, ref_values) -> str:
    """One sentence: is ``name``'s mean perplexity (lower is better) below ``reference``'s by more than
    the seed-to-seed spread (the larger of the two sample standard deviations)?"""
    import statistics
    m, r = statistics.mean(values), statistics.mean(ref_values)
    if len(values) < 2 or len(ref_values) < 2:
        how = "(one seed: no spread to compare with)"
    else:
        spread = max(statistics.stdev(values), statistics.stdev(ref_values))
        how = (f"more than the seed-to-seed spread of {spread:.1f}" if abs(m - r) > spread else
               f"within the seed-to-seed spread of {spread:.1f}: not a measured difference")
    word = "lower" if m < r else "higher"
    return f"{name}: perplexity {m:.1f} against {r:.1f} for {reference}, {abs(r - m):.1f} {word}, {how}"
