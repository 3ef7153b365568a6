"""Chapter 03's experiments (token-level distillation of GPT-2-style models).

This module starts with the one-dimensional picture of forward vs reverse KL:
a bimodal "teacher" distribution on a grid and a unimodal (Gaussian) "student"
fitted to it with ``losses.generalized_jsd`` (beta = 0: forward KL, mode-covering;
beta = 1: reverse KL, mode-seeking).
"""
from __future__ import annotations

import torch

from . import losses

GRID = torch.linspace(-5.0, 5.0, 201)  # the "vocabulary" of the 1-D picture


def bimodal_logits(grid: torch.Tensor = GRID, modes=(-2.0, 2.0), width: float = 0.6,
                   weights=(0.5, 0.5)) -> torch.Tensor:
    """Log-density (up to a constant) of a two-Gaussian mixture on ``grid``: the teacher."""
    w = torch.tensor(weights, dtype=torch.float32)
    comps = torch.stack([-(grid - m) ** 2 / (2 * width ** 2) for m in modes])     # (2, G)
    return torch.logsumexp(comps + w.log()[:, None], dim=0)                       # (G,)


def gaussian_logits(mu: torch.Tensor, log_sigma: torch.Tensor, grid: torch.Tensor = GRID) -> torch.Tensor:
    """Log-density (up to a constant) of N(mu, sigma²) on ``grid``: the student."""
    return -(grid - mu) ** 2 / (2 * torch.exp(log_sigma) ** 2)


def fit_gaussian(teacher_logits: torch.Tensor, beta: float, *, steps: int = 400, lr: float = 0.05,
                 init=(1.0, -0.6931), grid: torch.Tensor = GRID) -> dict:
    """Fit N(mu, sigma²) to the teacher by minimising ``generalized_jsd(student, teacher, beta)``.

    beta = 0 is forward KL(p_T || q): the student must cover both modes, so it
    sits between them with a wide sigma. beta = 1 is reverse KL(q || p_T): the
    student is punished for mass where the teacher has none, so it picks one mode.
    ``init`` is the starting (mu, log sigma), by default mu = 1, sigma = 0.5: a little
    nearer the right-hand mode, so that mode-seeking objectives have one to find.
    Returns mu, sigma, the final loss and both KLs.
    """
    mu = torch.tensor(float(init[0]), requires_grad=True)
    log_sigma = torch.tensor(float(init[1]), requires_grad=True)
    opt = torch.optim.Adam([mu, log_sigma], lr=lr)
    for _ in range(steps):
        loss = losses.generalized_jsd(gaussian_logits(mu, log_sigma, grid)[None], teacher_logits[None], beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = gaussian_logits(mu, log_sigma, grid)[None]
        p = teacher_logits[None]
        return {"beta": float(beta), "mu": float(mu), "sigma": float(torch.exp(log_sigma)),
                "loss": float(losses.generalized_jsd(q, p, beta)),
                "forward_kl": float(losses.forward_kl(q, p)), "reverse_kl": float(losses.reverse_kl(q, p)),
                "student_probs": torch.softmax(q[0], -1), "teacher_probs": torch.softmax(p[0], -1)}


def mode_mass(probs: torch.Tensor, grid: torch.Tensor = GRID, gap: float = 1.0) -> float:
    """Probability the distribution puts between the modes (|x| < gap): covering puts a lot there."""
    return float(probs[grid.abs() < gap].sum())


# ------------------------------------------------------------- the cost of logits

def logit_storage(vocab_size: int, ks=(1, 5, 20, 100), *, tokens: int = 1_000_000) -> list[dict]:
    """Bytes to store a teacher's logits for offline distillation, per token and for ``tokens`` tokens.

    Full logits in fp16: ``2·V`` bytes per token. Top-k: ``k`` fp16 values plus ``k`` indices
    (uint16 while ``V <= 65,536``, else int32): ``k·(2 + 2 or 4)`` bytes. Returns one row per
    format: ``{"format", "bytes_per_token", "gb_for_tokens", "fraction_of_full"}``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab_size]
    if bad:
        raise ValueError(f"each k must be an integer in [1, vocab_size={vocab_size}], got {bad}")
    full = 2 * vocab_size
    index_bytes = 2 if vocab_size <= 65_536 else 4
    rows = [("full logits (fp16)", full)] + [(f"top-{k} (fp16 value + index)", k * (2 + index_bytes)) for k in ks]
    return [{"format": name, "bytes_per_token": b, "gb_for_tokens": b * tokens / 1e9, "fraction_of_full": b / full}
            for name, b in rows]


# ------------------------------------------------------------------ gap analysis

FREQUENCY_BUCKETS = ((0, 100, "top 100 tokens"), (100, 1000, "ranks 100-999"), (1000, None, "rank 1000 and rarer"))


def token_ranks(train_blocks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Each token id's frequency rank in the training blocks (0 = most frequent) ``(V,)``."""
    counts = torch.bincount(train_blocks.flatten(), minlength=vocab_size)
    ranks = torch.empty(vocab_size, dtype=torch.long)
    ranks[counts.argsort(descending=True, stable=True)] = torch.arange(vocab_size)
    return ranks


def frequency_gap(losses_by_model: dict[str, dict], ranks: torch.Tensor) -> list[list]:
    """Mean next-token loss (nats) of each model per frequency bucket of the *target* token:
    rows ``[bucket, n positions, loss of model 1, loss of model 2, ...]`` (from ``metrics.token_nll``)."""
    first = next(iter(losses_by_model.values()))
    target_rank = ranks[first["target"]]
    rows = []
    for lo, hi, name in FREQUENCY_BUCKETS:
        pick = (target_rank >= lo) & (target_rank < hi if hi is not None else True)
        rows.append([name, int(pick.sum())] + [float(r["nll"][pick].mean()) if pick.any() else float("nan")
                                                for r in losses_by_model.values()])
    return rows


def shortfall_tokens(teacher: dict, student: dict, tokenizer, *, min_count: int = 20, top: int = 10) -> list[list]:
    """The target tokens where the student's mean loss exceeds the teacher's most (seen >= ``min_count``
    times): rows ``[token, count, teacher nats, student nats, gap]``."""
    if not torch.equal(teacher["target"], student["target"]):
        raise ValueError("teacher and student must be scored on the same blocks")
    ids = teacher["target"]
    v = int(ids.max()) + 1
    count = torch.bincount(ids, minlength=v).float()
    mean = lambda nll: torch.bincount(ids, weights=nll, minlength=v) / count.clamp_min(1)
    t, s = mean(teacher["nll"]), mean(student["nll"])
    gap = torch.where(count >= min_count, s - t, torch.full_like(t, float("-inf")))
    order = gap.argsort(descending=True)[:top]
    return [[tokenizer.decode([int(i)]), int(count[i]), float(t[i]), float(s[i]), float(gap[i])]
            for i in order if torch.isfinite(gap[i])]
