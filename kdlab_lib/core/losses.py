"""Every distillation objective of the lab, as pure functions on tensors.

Shapes: logits are ``(N, C)`` for classifiers or ``(B, S, V)`` for sequences;
the last dimension is always the classes / vocabulary. A ``mask`` has the shape
of the logits without their last dimension, ``True`` where a position counts.
Each loss reads check -> compute -> reduce: the checks (``checks``) raise a
plain-words ``ValueError`` on bad input (never a silent NaN), the math is a few
lines, and the result is the mean over the counted positions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks

DIVERGENCES = ("forward", "reverse", "jsd")   # the one list of token-level divergences


# ------------------------------------------------------------ building blocks (unchecked)

def at_least_fp32(x: Tensor) -> Tensor:
    """fp16 / bf16 upcast to float32 (``z / T`` can overflow in half precision); float64 stays."""
    return x if x.dtype == torch.float64 else x.float()


def log_soft(logits: Tensor, temperature: float) -> Tensor:
    """``log softmax(z / T)`` over the last dim, in float32 at least."""
    return F.log_softmax(at_least_fp32(logits) / temperature, dim=-1)


def kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q) = sum_c p_c (log p_c - log q_c)`` per position, from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def masked_mean(per_position: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the positions where ``mask`` is true (all of them when it is None)."""
    return per_position.mean() if mask is None else per_position[mask].mean()


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, loss: str = "forward", *,
                     beta: float = 0.5, temperature: float = 1.0) -> Tensor:
    """``D(p_T, p_S)`` at every position ``(...,)``, both sides softened at T; no mean, no checks.

    - ``"forward"``: ``KL(p_T || p_S)`` (``forward_kl``; Hinton's soft term);
    - ``"reverse"``: ``KL(p_S || p_T)`` (``reverse_kl``);
    - ``"jsd"``: ``beta · KL(p_T || m) + (1 - beta) · KL(p_S || m)`` with
      ``m = beta · p_T + (1 - beta) · p_S`` (``generalized_jsd``; beta = 0 / 1 are the
      forward / reverse KL).
    The one place these formulas live; the losses below and ``chunked_loss`` call it.
    """
    log_s = log_soft(student_logits, temperature)                      # (..., V)
    log_t = log_soft(teacher_logits, temperature)                      # (..., V)
    if loss == "forward" or (loss == "jsd" and beta == 0.0):
        return kl(log_t, log_s)
    if loss == "reverse" or (loss == "jsd" and beta == 1.0):
        return kl(log_s, log_t)
    checks.divergence(loss, DIVERGENCES)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1.0 - beta)]), dim=0)
    return beta * kl(log_t, log_m) + (1.0 - beta) * kl(log_s, log_m)


def topk_divergence(student_logits: Tensor, topk_values: Tensor, topk_indices: Tensor, *,
                    temperature: float = 1.0) -> Tensor:
    """``sum_j p_j (log p_j - log q_{i_j})`` at every position ``(...,)``, no T², mean or checks.

    ``p = softmax(topk_values / T)`` over the k kept entries, ``log q = log_softmax(z_S / T)``
    over the student's full vocabulary gathered at ``topk_indices``: the core of ``topk_kd_loss``.
    """
    log_p = log_soft(topk_values, temperature)                                   # (..., k)
    log_q = log_soft(student_logits, temperature).gather(-1, topk_indices.long())  # (..., k)
    return kl(log_p, log_q)


# -------------------------------------------------------------------- losses

def soften(logits: Tensor, temperature: float) -> Tensor:
    """Softened probabilities ``p_i = exp(z_i / T) / sum_j exp(z_j / T)`` (last dim).

    T = 1 is the ordinary softmax; T > 1 flattens the distribution and lifts the
    small probabilities that carry the "dark knowledge" (Hinton et al. 2015).
    """
    temperature = checks.temperature(temperature)
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating point torch.Tensor")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contains NaN or inf values")
    return torch.softmax(at_least_fp32(logits) / temperature, dim=-1).to(logits.dtype)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
               mask: Tensor | None = None) -> Tensor:
    """Forward KL ``KL(p_T || p_S) = sum_v p_T(v) [log p_T(v) - log p_S(v)]``.

    Both sides softened at ``temperature``; mean over counted positions; no T²
    factor (``kd_loss`` is the T²-scaled one). Mode-covering: the student is
    punished wherever the teacher has mass it lacks.
    """
    temperature = checks.temperature(temperature)
    mask = checks.pair(student_logits, teacher_logits, mask)
    per_position = token_divergence(student_logits, teacher_logits, "forward", temperature=temperature)
    return masked_mean(per_position, mask)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
               mask: Tensor | None = None) -> Tensor:
    """Reverse KL ``KL(p_S || p_T) = sum_v p_S(v) [log p_S(v) - log p_T(v)]``.

    Same arguments as ``forward_kl``. Mode-seeking: the student is punished for
    mass where the teacher has little, so it may drop some of the teacher's modes
    (used by MiniLLM, Gu et al. 2024).
    """
    temperature = checks.temperature(temperature)
    mask = checks.pair(student_logits, teacher_logits, mask)
    per_position = token_divergence(student_logits, teacher_logits, "reverse", temperature=temperature)
    return masked_mean(per_position, mask)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, beta: float, *,
                    temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024).

    With the mixture ``m = beta · p_T + (1 - beta) · p_S``:
    ``JSD_beta = beta · KL(p_T || m) + (1 - beta) · KL(p_S || m)``.
    Following TRL's ``GKDTrainer.generalized_jsd_loss``, the end points are
    defined as the two KLs: ``beta = 0`` gives forward ``KL(p_T || p_S)`` and
    ``beta = 1`` gives reverse ``KL(p_S || p_T)``. Mean over counted positions.
    """
    beta, temperature = checks.weight("beta", beta), checks.temperature(temperature)
    mask = checks.pair(student_logits, teacher_logits, mask)
    per_position = token_divergence(student_logits, teacher_logits, "jsd", beta=beta, temperature=temperature)
    return masked_mean(per_position, mask)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, *,
            mask: Tensor | None = None) -> Tensor:
    """Hinton et al. (2015) soft-target loss ``T² · KL(p_T || p_S)``, both softened at T.

    The gradient of the KL with respect to a student logit is ``(q_i - p_i) / T``, and once
    the targets are soft, ``q - p`` itself shrinks like ``1/T``: without a correction the soft
    term's gradient would fade like ``1/T²`` as T grows. The T² factor stops it from vanishing
    (it is only roughly constant once T is large). Averaged over examples (for ``(B, S, V)``
    sequences: over the positions where ``mask`` is true).
    """
    temperature = checks.temperature(temperature)
    return temperature ** 2 * forward_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)


def soft_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, *, loss: str = "forward",
              beta: float = 0.5, mask: Tensor | None = None) -> Tensor:
    """The soft term of token-level KD, ``T² · D(p_T, p_S)`` for any divergence D of ``DIVERGENCES``
    (``token_divergence``), mean over counted positions: ``kd_loss`` is the forward-KL case."""
    temperature, beta = checks.temperature(temperature), checks.weight("beta", beta)
    mask, loss = checks.pair(student_logits, teacher_logits, mask), checks.divergence(loss, DIVERGENCES)
    per_position = token_divergence(student_logits, teacher_logits, loss, beta=beta, temperature=temperature)
    return temperature ** 2 * masked_mean(per_position, mask)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float,
                      alpha: float, *, mask: Tensor | None = None) -> Tensor:
    """``alpha · CE(student_logits, labels) + (1 - alpha) · T² · KL(p_T || p_S)``.

    The book's form of Hinton et al. (2015): ``alpha`` weighs the hard labels,
    ``1 - alpha`` the teacher's soft targets at temperature T (T²-scaled, so the two
    terms stay comparable as T changes). alpha = 1 is plain training on labels,
    alpha = 0 is pure distillation. Labels equal to -100 are ignored by the hard
    term, as in PyTorch's ``cross_entropy``.
    """
    alpha, temperature = checks.weight("alpha", alpha), checks.temperature(temperature)
    mask = checks.pair(student_logits, teacher_logits, mask)
    labels = checks.labels(labels, student_logits)
    z_s = at_least_fp32(student_logits)
    hard = F.cross_entropy(z_s.reshape(-1, z_s.shape[-1]), labels.reshape(-1), ignore_index=-100)
    soft = temperature ** 2 * masked_mean(token_divergence(z_s, teacher_logits, temperature=temperature), mask)
    return alpha * hard + (1.0 - alpha) * soft


def cosine_hidden_loss(student_hidden: Tensor, teacher_hidden: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """DistilBERT's L_cos (Sanh et al. 2019): mean over counted positions of ``1 - cos(h_S, h_T)``.

    Pulls the direction of the student's hidden state towards the teacher's;
    needs equal hidden sizes (DistilBERT keeps the teacher's width).
    """
    mask = checks.pair(student_hidden, teacher_hidden, mask, "student_hidden", "teacher_hidden")
    cos = F.cosine_similarity(at_least_fp32(student_hidden), at_least_fp32(teacher_hidden), dim=-1)  # (...,)
    return masked_mean(1.0 - cos, mask)


def topk_kd_loss(student_logits: Tensor, topk_values: Tensor, topk_indices: Tensor, temperature: float, *,
                 mask: Tensor | None = None) -> Tensor:
    """KD against a teacher stored as its top-k logits only (offline logit caching).

    Teacher: ``p_j = softmax(v / T)_j`` over its k kept entries (renormalised).
    Student: ``log q = log_softmax(z_S / T)`` over the full vocabulary, gathered
    at ``topk_indices``. Loss: ``T² · sum_j p_j (log p_j - log q_{i_j})``, mean over
    counted positions. With k = vocabulary size it equals ``kd_loss`` exactly.
    """
    temperature = checks.temperature(temperature)
    mask = checks.topk(student_logits, topk_values, topk_indices, mask)
    per_position = topk_divergence(student_logits, topk_values, topk_indices, temperature=temperature)
    return temperature ** 2 * masked_mean(per_position, mask)


def multi_objective_loss(student_logits: Tensor, teacher_logits: Tensor, mlm_labels: Tensor | None,
                         student_hidden: Tensor | None, teacher_hidden: Tensor | None, *,
                         attention_mask: Tensor | None = None, temperature: float = 2.0, w_soft: float = 5.0,
                         w_mlm: float = 2.0, w_cos: float = 1.0) -> dict[str, Tensor]:
    """DistilBERT's triple loss (Sanh et al. 2019), each term returned for logging.

    ``L = w_soft · T² · KL(p_T || p_S) + w_mlm · CE(student_logits, mlm_labels) + w_cos · (1 - cos)``

    - soft: ``kd_loss`` over every attended position (DistilBERT's default), T = 2;
    - mlm: the usual masked-LM cross-entropy on the masked positions (labels -100 elsewhere);
    - cos: ``cosine_hidden_loss`` between last hidden states over attended positions.
    Shapes: logits ``(B, S, V)``, labels and mask ``(B, S)``, hidden ``(B, S, H)``.
    The DistilBERT README's example command sets alpha_ce = 5, alpha_mlm = 2, alpha_cos = 1.
    Returns ``{"loss", "soft", "mlm", "cos"}`` (terms unweighted, ``loss`` weighted); a term
    whose weight is 0 is not computed (its inputs may then be None).
    """
    w = checks.loss_weights(w_soft=w_soft, w_mlm=w_mlm, w_cos=w_cos)
    mask = checks.pair(student_logits, teacher_logits, attention_mask)  # finite, same shape, even when w_soft = 0
    zero = student_logits.new_zeros((), dtype=torch.float32)
    terms = {
        "soft": kd_loss(student_logits, teacher_logits, temperature, mask=mask) if w_soft else zero,
        "mlm": (F.cross_entropy(at_least_fp32(student_logits).flatten(0, -2),
                                checks.labels(mlm_labels, student_logits).flatten(), ignore_index=-100)
                if w_mlm else zero),
        "cos": cosine_hidden_loss(student_hidden, teacher_hidden, mask=mask) if w_cos else zero,
    }
    terms["loss"] = w["w_soft"] * terms["soft"] + w["w_mlm"] * terms["mlm"] + w["w_cos"] * terms["cos"]
    return terms
