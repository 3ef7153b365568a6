"""Every distillation objective of the lab, as pure functions on tensors.

Shapes: logits are ``(N, C)`` for classifiers or ``(B, S, V)`` for sequences;
the last dimension is always the classes / vocabulary. A ``mask`` has the shape
of the logits without their last dimension, ``True`` where a position counts.
Every loss averages over the counted positions and raises ``ValueError`` with a
plain-words message on bad input (never a silent NaN).
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- validation


def _check_number(name: str, value, low: float | None = None, high: float | None = None,
                  positive: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value} (T = 1 is the plain softmax; "
                         f"larger T gives softer targets)")
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {value}")
    return value


def _check_logits(name: str, logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point logits, got dtype {logits.dtype}")
    if logits.dim() < 2:
        raise ValueError(f"{name} must have shape (batch, classes) or (batch, seq, vocab), "
                         f"got shape {tuple(logits.shape)}; add a batch dimension with "
                         f"logits.unsqueeze(0)")
    if logits.shape[-1] < 1 or logits.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(logits.shape)})")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{name} contains NaN or inf values; check the model's outputs "
                         f"(a diverged run or a missing normalisation)")
    return logits


def _check_pair(student, teacher, s_name="student_logits", t_name="teacher_logits"):
    _check_logits(s_name, student)
    _check_logits(t_name, teacher)
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(f"vocabulary mismatch: {s_name} has {student.shape[-1]} classes but "
                         f"{t_name} has {teacher.shape[-1]}; teacher and student must share "
                         f"one label set / tokenizer")
    if student.shape != teacher.shape:
        raise ValueError(f"shape mismatch: {s_name} {tuple(student.shape)} vs "
                         f"{t_name} {tuple(teacher.shape)}")


def _check_mask(mask, positions: torch.Size) -> torch.Tensor | None:
    """Return a boolean mask of shape ``positions`` (or None for 'all')."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != positions:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the logits have positions "
                         f"{tuple(positions)} (the mask drops the last, vocabulary dimension)")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must be boolean (or 0/1 integers), e.g. attention_mask.bool()")
        mask = mask.bool()
    if not mask.any():
        raise ValueError("mask selects no position: there is nothing to average over")
    return mask


def _masked_mean(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_position.mean()
    return per_position[mask].mean()


def _log_soft(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(z / T) in float32 at least (fp16/bf16 logits are upcast; float64 stays float64)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    return F.log_softmax(z / temperature, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position, from log-probabilities: sum_c p_c (log p_c - log q_c)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


# ------------------------------------------------- per-position cores (unchecked)

DIVERGENCES = ("forward", "reverse", "jsd")


def token_divergence(student_logits, teacher_logits, loss="forward", *, beta=0.5, temperature=1.0):
    """``D(p_T, p_S)`` at every position ``(...,)``, no mean and no input checks.

    The one place the formulas of ``forward_kl`` (``loss="forward"``, ``KL(p_T || p_S)``),
    ``reverse_kl`` (``"reverse"``, ``KL(p_S || p_T)``) and ``generalized_jsd`` (``"jsd"``,
    ``beta · KL(p_T || m) + (1 - beta) · KL(p_S || m)`` with ``m = beta · p_T + (1 - beta) · p_S``;
    beta = 0 / 1 are the forward / reverse KL) live; those functions and the chunked loss
    (``chunked_loss``) call it on checked inputs. Computed in float32 at least.
    """
    log_s = _log_soft(student_logits, temperature)                     # (..., V)
    log_t = _log_soft(teacher_logits, temperature)                     # (..., V)
    if loss == "forward" or (loss == "jsd" and beta == 0.0):
        return _kl(log_t, log_s)
    if loss == "reverse" or (loss == "jsd" and beta == 1.0):
        return _kl(log_s, log_t)
    if loss != "jsd":
        raise ValueError(f"loss must be one of {DIVERGENCES}, got {loss!r}")
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta),
                                         log_s + math.log(1.0 - beta)]), dim=0)
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def topk_divergence(student_logits, topk_values, topk_indices, *, temperature=1.0):
    """``sum_j p_j (log p_j - log q_{i_j})`` at every position ``(...,)``, no T², mean or checks.

    ``p = softmax(topk_values / T)`` over the k kept entries, ``log q = log_softmax(z_S / T)``
    over the student's full vocabulary gathered at ``topk_indices``: the core of ``topk_kd_loss``.
    """
    log_p = _log_soft(topk_values, temperature)                                   # (..., k)
    log_q = _log_soft(student_logits, temperature).gather(-1, topk_indices.long())  # (..., k)
    return _kl(log_p, log_q)


# -------------------------------------------------------------------- losses


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softened probabilities ``p_i = exp(z_i / T) / sum_j exp(z_j / T)`` (last dim).

    T = 1 is the ordinary softmax; T > 1 flattens the distribution and lifts the
    small probabilities that carry the "dark knowledge" (Hinton et al. 2015).
    """
    temperature = _check_number("temperature", temperature, positive=True)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating point torch.Tensor")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contains NaN or inf values")
    z = logits if logits.dtype == torch.float64 else logits.float()  # fp16 z / T can overflow
    return torch.softmax(z / temperature, dim=-1).to(logits.dtype)


def forward_kl(student_logits, teacher_logits, *, temperature=1.0, mask=None):
    """Forward KL ``KL(p_T || p_S) = sum_v p_T(v) [log p_T(v) - log p_S(v)]``.

    Both sides softened at ``temperature``; mean over counted positions; no T²
    factor (``kd_loss`` is the T²-scaled one). Mode-covering: the student is
    punished wherever the teacher has mass it lacks.
    """
    temperature = _check_number("temperature", temperature, positive=True)
    _check_pair(student_logits, teacher_logits)
    mask = _check_mask(mask, student_logits.shape[:-1])
    return _masked_mean(token_divergence(student_logits, teacher_logits, "forward", temperature=temperature), mask)


def reverse_kl(student_logits, teacher_logits, *, temperature=1.0, mask=None):
    """Reverse KL ``KL(p_S || p_T) = sum_v p_S(v) [log p_S(v) - log p_T(v)]``.

    Same arguments as ``forward_kl``. Mode-seeking: the student is punished for
    mass where the teacher has little, so it may drop some of the teacher's modes
    (used by MiniLLM, Gu et al. 2024).
    """
    temperature = _check_number("temperature", temperature, positive=True)
    _check_pair(student_logits, teacher_logits)
    mask = _check_mask(mask, student_logits.shape[:-1])
    return _masked_mean(token_divergence(student_logits, teacher_logits, "reverse", temperature=temperature), mask)


def kd_loss(student_logits, teacher_logits, temperature, *, mask=None):
    """Hinton et al. (2015) soft-target loss ``T² · KL(p_T || p_S)``, both softened at T.

    The gradient of ``KL`` with respect to a student logit is ``(q_i - p_i) / T``,
    so it shrinks like ``1/T²`` once the targets are soft; the T² factor keeps the
    soft term's gradient size roughly constant as T changes. Averaged over
    examples (for ``(B, S, V)`` sequences: over the positions where ``mask`` is true).
    """
    temperature = _check_number("temperature", temperature, positive=True)
    return temperature ** 2 * forward_kl(student_logits, teacher_logits,
                                         temperature=temperature, mask=mask)


def _check_labels(labels, logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices (dtype long), got {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the logits have positions "
                         f"{tuple(logits.shape[:-1])}")
    counted = labels != -100
    if not counted.any():
        raise ValueError("every label is -100 (ignored): there is nothing to average over")
    n_classes = logits.shape[-1]
    bad = counted & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        raise ValueError(f"labels must lie in [0, {n_classes - 1}] (or be -100 to ignore), "
                         f"found {labels[bad][0].item()}")
    return labels.long()


def distillation_loss(student_logits, teacher_logits, labels, temperature, alpha, *, mask=None):
    """``alpha · CE(student_logits, labels) + (1 - alpha) · kd_loss(...)``.

    The book's form of Hinton et al. (2015): ``alpha`` weighs the hard labels,
    ``1 - alpha`` the teacher's soft targets at temperature T (already T²-scaled,
    so the two terms stay comparable as T changes). alpha = 1 is plain training
    on labels, alpha = 0 is pure distillation. Labels equal to -100 are ignored
    by the hard term, as in PyTorch's ``cross_entropy``.
    """
    alpha = _check_number("alpha", alpha, 0.0, 1.0)
    temperature = _check_number("temperature", temperature, positive=True)
    _check_pair(student_logits, teacher_logits)
    labels = _check_labels(labels, student_logits)
    hard = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]),
                           labels.reshape(-1), ignore_index=-100)
    soft = kd_loss(student_logits, teacher_logits, temperature, mask=mask)
    return alpha * hard + (1.0 - alpha) * soft


def generalized_jsd(student_logits, teacher_logits, beta, *, temperature=1.0, mask=None):
    """Generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024).

    With the mixture ``m = beta · p_T + (1 - beta) · p_S``:
    ``JSD_beta = beta · KL(p_T || m) + (1 - beta) · KL(p_S || m)``.
    Following TRL's ``GKDTrainer.generalized_jsd_loss``, the end points are
    defined as the two KLs: ``beta = 0`` gives forward ``KL(p_T || p_S)`` and
    ``beta = 1`` gives reverse ``KL(p_S || p_T)``. Mean over counted positions.
    """
    beta = _check_number("beta", beta, 0.0, 1.0)
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    temperature = _check_number("temperature", temperature, positive=True)
    _check_pair(student_logits, teacher_logits)
    mask = _check_mask(mask, student_logits.shape[:-1])
    return _masked_mean(token_divergence(student_logits, teacher_logits, "jsd", beta=beta,
                                         temperature=temperature), mask)


def cosine_hidden_loss(student_hidden, teacher_hidden, *, mask=None):
    """DistilBERT's L_cos (Sanh et al. 2019): mean over counted positions of ``1 - cos(h_S, h_T)``.

    Pulls the direction of the student's hidden state towards the teacher's;
    needs equal hidden sizes (DistilBERT keeps the teacher's width).
    """
    _check_pair(student_hidden, teacher_hidden, "student_hidden", "teacher_hidden")
    mask = _check_mask(mask, student_hidden.shape[:-1])
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return _masked_mean(1.0 - cos, mask)


def topk_kd_loss(student_logits, topk_values, topk_indices, temperature, *, mask=None):
    """KD against a teacher stored as its top-k logits only (offline logit caching).

    Teacher: ``p_j = softmax(v / T)_j`` over its k kept entries (renormalised).
    Student: ``log q = log_softmax(z_S / T)`` over the full vocabulary, gathered
    at ``topk_indices``. Loss: ``T² · sum_j p_j (log p_j - log q_{i_j})``, mean over
    counted positions. With k = vocabulary size it equals ``kd_loss`` exactly.
    """
    temperature = _check_number("temperature", temperature, positive=True)
    _check_logits("student_logits", student_logits)
    _check_logits("topk_values", topk_values)
    if not isinstance(topk_indices, torch.Tensor) or topk_indices.is_floating_point():
        raise ValueError("topk_indices must be an integer torch.Tensor")
    if topk_values.shape != topk_indices.shape:
        raise ValueError(f"topk_values {tuple(topk_values.shape)} and topk_indices "
                         f"{tuple(topk_indices.shape)} must have the same shape")
    if topk_values.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"the cached teacher covers positions {tuple(topk_values.shape[:-1])} "
                         f"but the student has {tuple(student_logits.shape[:-1])}")
    vocab = student_logits.shape[-1]
    if topk_values.shape[-1] > vocab:
        raise ValueError(f"k = {topk_values.shape[-1]} exceeds the vocabulary size {vocab}")
    if (topk_indices < 0).any() or (topk_indices >= vocab).any():
        raise ValueError(f"topk_indices must lie in [0, {vocab - 1}] (the student's vocabulary); "
                         f"found {int(topk_indices.min())}..{int(topk_indices.max())}")
    mask = _check_mask(mask, student_logits.shape[:-1])
    return temperature ** 2 * _masked_mean(topk_divergence(student_logits, topk_values, topk_indices,
                                                           temperature=temperature), mask)


def multi_objective_loss(student_logits, teacher_logits, mlm_labels, student_hidden, teacher_hidden,
                         *, attention_mask=None, temperature=2.0, w_soft=5.0, w_mlm=2.0, w_cos=1.0):
    """DistilBERT's triple loss (Sanh et al. 2019), each term returned for logging.

    ``L = w_soft · T² · KL(p_T || p_S) + w_mlm · CE(student_logits, mlm_labels) + w_cos · (1 - cos)``

    - soft: ``kd_loss`` over every attended position (DistilBERT's default), T = 2;
    - mlm: the usual masked-LM cross-entropy on the masked positions (labels -100 elsewhere);
    - cos: ``cosine_hidden_loss`` between last hidden states over attended positions.
    Shapes: logits ``(B, S, V)``, labels and mask ``(B, S)``, hidden ``(B, S, H)``.
    The training script calls the weights alpha_ce = 5, alpha_mlm = 2, alpha_cos = 1.
    Returns ``{"loss", "soft", "mlm", "cos"}`` (terms unweighted, ``loss`` weighted); a term
    whose weight is 0 is not computed (its inputs may then be None).
    """
    weights = {k: _check_number(k, v) for k, v in (("w_soft", w_soft), ("w_mlm", w_mlm), ("w_cos", w_cos))}
    if any(v < 0 for v in weights.values()) or not any(weights.values()):
        raise ValueError(f"the weights must be >= 0 and not all zero, got {weights}")
    _check_pair(student_logits, teacher_logits)  # finite, same shape, even when w_soft = 0
    mask = None if attention_mask is None else _check_mask(attention_mask, student_logits.shape[:-1])
    zero = student_logits.new_zeros((), dtype=torch.float32)
    terms = {
        "soft": kd_loss(student_logits, teacher_logits, temperature, mask=mask) if w_soft else zero,
        "mlm": (F.cross_entropy(student_logits.float().flatten(0, -2),
                                _check_labels(mlm_labels, student_logits).flatten(), ignore_index=-100)
                if w_mlm else zero),
        "cos": cosine_hidden_loss(student_hidden, teacher_hidden, mask=mask) if w_cos else zero,
    }
    terms["loss"] = weights["w_soft"] * terms["soft"] + weights["w_mlm"] * terms["mlm"] + weights["w_cos"] * terms["cos"]
    return terms
