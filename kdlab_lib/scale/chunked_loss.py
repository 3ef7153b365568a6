"""Token-level KD without ever holding the full (positions × vocabulary) logits.

For a batch of 8 × 1,024 GPT-2 positions the logits are 8,192 × 50,257 numbers:
1.6 GB in float32, and a KL needs several tensors that size (both log-softmaxes,
their difference, the gradient). Here the loss starts from the *last hidden states*
``h`` ``(..., H)`` of teacher and student and their output projections ``W``
``(V', H)`` (``V' >= V``: a vocabulary padded for fast matrix products, see
``fast_kd.pad_vocab``), and works through ``chunk_size`` positions at a time::

    z_S = h_S[i:j] @ W_S.T      (C, V')  ->  z_S[:, :V]   padded entries dropped before every softmax
    z_T = h_T[i:j] @ W_T.T      (C, V')  ->  z_T[:, :V]   (no gradient)
    soft += T² · sum D(p_T, p_S)            D from losses.token_divergence (one place for the formulas)
    hard += sum CE(z_S, labels)             the next-token term, when labels are given

``loss = alpha · hard / n + (1 - alpha) · soft / n`` over the ``n`` counted positions,
the same numbers as ``train_text.token_kd_terms`` on full logits. Gradients are exact: a
``torch.autograd.Function`` computes each chunk's gradient with respect to its hidden
states and the projection in its forward pass (autograd on that chunk alone) and keeps
only those, so backward merely scales them. Peak extra memory: one chunk's logits and
their temporaries, plus a gradient the size of ``W``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import checks, losses


class _ChunkedLoss(torch.autograd.Function):
    """``sum over chunks of objective(z_chunk) / n`` with ``z = hidden @ weight.T + bias``.

    ``per_chunk(z, i, j) -> (objective, soft, hard)`` gets the chunk's student logits
    ``(j - i, V)`` (already cut to the true vocabulary) and returns sums over its positions;
    ``objective`` carries the gradient, ``soft`` and ``hard`` are for logging (``hard`` may be None).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, per_chunk, chunk_size, vocab, n, grad_enabled):
        # hidden (N, H), weight (V', H), bias (V',) or None
        need = tuple(grad_enabled and x for x in ctx.needs_input_grad[:3])
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_h = torch.empty_like(hidden) if need[0] else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need[1] else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need[2] else None
        total = {"loss": hidden.new_zeros((), dtype=acc), "soft": hidden.new_zeros((), dtype=acc),
                 "hard": hidden.new_zeros((), dtype=acc)}
        with torch.enable_grad():
            w = weight.detach().requires_grad_(need[1])          # one leaf for every chunk
            b = bias.detach().requires_grad_(need[2]) if bias is not None else None
            for i in range(0, hidden.shape[0], chunk_size):
                j = min(i + chunk_size, hidden.shape[0])
                h = hidden[i:j].detach().requires_grad_(need[0])  # (C, H)
                z = F.linear(h, w, b)[:, :vocab]                 # (C, V)
                objective, soft, hard = per_chunk(z, i, j)
                objective = objective / n
                wrt = [t for t, needed in zip((h, w, b), need) if needed]
                grads = iter(torch.autograd.grad(objective, wrt)) if wrt else iter(())
                if need[0]:
                    grad_h[i:j] = next(grads)
                if need[1]:
                    grad_w += next(grads)
                if need[2]:
                    grad_b += next(grads)
                total["loss"] += objective.detach()
                total["soft"] += soft.detach() / n
                if hard is not None:
                    total["hard"] += hard.detach() / n
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(total["soft"], total["hard"])
        return total["loss"], total["soft"], total["hard"]

    @staticmethod
    def backward(ctx, g_loss, _g_soft, _g_hard):
        # the chunk gradients were computed for d(loss) = 1: scale by the incoming gradient
        scaled = [None if g is None else (g * g_loss).to(dtype) for g, dtype in zip(ctx.grads, ctx.dtypes)]
        return (*scaled, None, None, None, None, None)


def _run(hidden, weight, bias, per_chunk, chunk_size, vocab, n, with_hard) -> dict:
    """Apply ``_ChunkedLoss``; ``{"loss", "soft"}`` plus ``"hard"`` when ``with_hard``."""
    loss, soft, hard = _ChunkedLoss.apply(hidden, weight, bias, per_chunk, chunk_size, vocab, n,
                                           torch.is_grad_enabled())
    return {"loss": loss, "soft": soft, **({"hard": hard} if with_hard else {})}


# ------------------------------------------------------------------ checks

def _check_inputs(student_hidden, student_weight, student_bias, vocab_size, chunk_size, mask, labels):
    """Shapes, finiteness, vocabulary and chunk size; returns (vocab, mask or None, labels or None)."""
    for name, t in (("student_hidden", student_hidden), ("student_weight", student_weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating point torch.Tensor")
    if student_hidden.dim() < 2 or student_hidden.shape[:-1].numel() == 0:
        raise ValueError(f"student_hidden must have shape (..., positions, hidden) with at least one position, "
                         f"got {tuple(student_hidden.shape)}")
    if student_weight.dim() != 2 or student_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(f"student_weight must be the output projection (vocabulary, "
                         f"hidden={student_hidden.shape[-1]}), "
                         f"got {tuple(student_weight.shape)}")
    if student_bias is not None and student_bias.shape != student_weight.shape[:1]:
        raise ValueError(f"student_bias must have shape ({student_weight.shape[0]},), got {tuple(student_bias.shape)}")
    vocab = student_weight.shape[0] if vocab_size is None else vocab_size
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 1 <= vocab <= student_weight.shape[0]:
        raise ValueError(f"vocab_size must be an integer in [1, {student_weight.shape[0]}] (the projection's rows; "
                         f"a padded projection has more rows than the vocabulary), got {vocab_size!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1 (positions per chunk), got {chunk_size!r}")
    if not torch.isfinite(student_hidden).all():
        raise ValueError("student_hidden contains NaN or inf values; check the model (a diverged run?)")
    positions = student_hidden.shape[:-1]
    mask = checks.mask(mask, positions)
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.shape != positions:
            raise ValueError(f"labels must be integer token ids of shape {tuple(positions)} (the next token at "
                             f"each position), got {getattr(labels, 'shape', type(labels).__name__)}")
        counted = labels if mask is None else labels[mask]
        if (counted < 0).any() or (counted >= vocab).any():
            raise ValueError(f"labels must lie in [0, {vocab - 1}] at the counted positions")
    return vocab, mask, labels


def _rows(t: torch.Tensor | None, mask: torch.Tensor | None, width: bool = True) -> torch.Tensor | None:
    """``(..., X)`` -> ``(n, X)`` (or ``(...,)`` -> ``(n,)``), keeping the counted positions only."""
    if t is None:
        return None
    flat = t.reshape(-1, t.shape[-1]) if width else t.reshape(-1)
    return flat if mask is None else flat[mask.reshape(-1)]


def _hard_sum(z: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Summed next-token cross-entropy of logits ``(C, V)``; with a gradient only when alpha > 0."""
    zz = losses.at_least_fp32(z)
    if alpha > 0:
        return F.cross_entropy(zz, labels.long(), reduction="sum")
    with torch.no_grad():
        return F.cross_entropy(zz.detach(), labels.long(), reduction="sum")


def _check_labels_for(alpha: float, labels) -> None:
    if alpha > 0 and labels is None:
        raise ValueError(f"alpha = {alpha} weighs the next-token term, which needs labels")


def _check_teacher(teacher_hidden, teacher_weight, student_hidden, vocab, loss, top_k, alpha, labels) -> None:
    """The live teacher's hidden states and projection against the student's, and the loss settings."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be an integer in [1, {vocab}] (or None for every logit), got {top_k!r}")
    if top_k is not None and loss != "forward":
        raise ValueError(f"top_k keeps the teacher's k largest logits for the forward KL; loss={loss!r} "
                         f"needs the teacher's whole distribution (drop top_k)")
    _check_labels_for(alpha, labels)
    if not isinstance(teacher_hidden, torch.Tensor) or teacher_hidden.shape[:-1] != student_hidden.shape[:-1]:
        raise ValueError(f"teacher_hidden must cover the student's positions {tuple(student_hidden.shape[:-1])}, "
                         f"got {tuple(getattr(teacher_hidden, 'shape', ()))}")
    if teacher_weight.dim() != 2 or teacher_weight.shape[1] != teacher_hidden.shape[-1] \
            or teacher_weight.shape[0] < vocab:
        raise ValueError(f"teacher_weight must be (vocabulary >= {vocab}, hidden={teacher_hidden.shape[-1]}), "
                         f"got {tuple(teacher_weight.shape)}: teacher and student must share the vocabulary")
    if not torch.isfinite(teacher_hidden).all():
        raise ValueError("teacher_hidden contains NaN or inf values")


def _check_cache(topk_values, topk_indices, student_hidden, vocab, alpha, labels) -> torch.Tensor:
    """A cached teacher's top-k values and indices against the student's positions; the indices as int64."""
    _check_labels_for(alpha, labels)
    positions = student_hidden.shape[:-1]
    if not isinstance(topk_values, torch.Tensor) or not isinstance(topk_indices, torch.Tensor) \
            or topk_values.shape != topk_indices.shape or topk_values.shape[:-1] != positions:
        raise ValueError(f"topk_values and topk_indices must both have shape {tuple(positions)} + (k,), got "
                         f"{tuple(getattr(topk_values, 'shape', ()))} and {tuple(getattr(topk_indices, 'shape', ()))}")
    if topk_indices.is_floating_point():
        raise ValueError("topk_indices must be an integer tensor")
    if not torch.isfinite(topk_values.float()).all():
        raise ValueError("topk_values contains NaN or inf values")
    idx = topk_indices.to(torch.int64)
    if (idx < 0).any() or (idx >= vocab).any():
        raise ValueError(f"topk_indices must lie in [0, {vocab - 1}] (the student's vocabulary); "
                         f"found {int(idx.min())}..{int(idx.max())}")
    return idx


# ------------------------------------------------------------------ losses

def chunked_kd_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, *, loss="forward", beta=0.5,
                    temperature=1.0, mask=None, labels=None, alpha=0.0, top_k=None, vocab_size=None,
                    chunk_size=1024, student_bias=None, teacher_bias=None) -> dict:
    """Token-level KD from last hidden states, ``chunk_size`` positions at a time.

    ``soft = T² · mean D(p_T, p_S)`` over the counted positions (``mask``), D the forward KL,
    reverse KL or generalised JSD (``loss``, ``beta`` as in ``losses.generalized_jsd``), both
    sides softened at T; ``hard = mean CE(z_S, labels)`` (T = 1) when ``labels`` are given;
    ``loss = alpha · hard + (1 - alpha) · soft``. Equals ``T² · losses.forward_kl(...)`` (and
    friends) on the full logits ``h @ W.T`` cut to ``vocab_size``, gradients included. With
    ``top_k`` the teacher keeps its k largest logits per position (``losses.topk_kd_loss``,
    forward KL only), as ``train_text.token_kd_terms`` does on full logits.

    Shapes: ``student_hidden`` ``(..., Hs)``, ``teacher_hidden`` ``(..., Ht)`` with the same leading
    positions; weights ``(V', Hs)`` and ``(V'', Ht)`` with ``V', V'' >= vocab_size`` (rows past
    ``vocab_size`` are padding and never enter a softmax); ``mask`` and ``labels`` ``(...)``.
    Returns ``{"loss", "soft"}`` plus ``"hard"`` with labels; only ``loss`` carries a gradient
    (to the student's hidden states, weight and bias; the teacher gets none).
    """
    temperature, loss = checks.temperature(temperature), checks.divergence(loss, losses.DIVERGENCES)
    beta, alpha = checks.weight("beta", beta), checks.weight("alpha", alpha)
    vocab, mask, labels = _check_inputs(student_hidden, student_weight, student_bias, vocab_size, chunk_size,
                                        mask, labels)
    _check_teacher(teacher_hidden, teacher_weight, student_hidden, vocab, loss, top_k, alpha, labels)
    h_s, h_t = _rows(student_hidden, mask), _rows(teacher_hidden.detach(), mask)    # (n, Hs), (n, Ht)
    y = _rows(labels, mask, width=False)                                            # (n,) or None
    w_t = teacher_weight.detach()
    b_t = None if teacher_bias is None else teacher_bias.detach()
    t2 = temperature * temperature

    def per_chunk(z, i, j):
        with torch.no_grad():
            z_t = F.linear(h_t[i:j], w_t, b_t)[:, :vocab]                            # (C, V)
        if top_k:
            vals, idx = z_t.topk(top_k, dim=-1)                                     # (C, k)
            div = losses.topk_divergence(z, vals, idx, temperature=temperature)
        else:
            div = losses.token_divergence(z, z_t, loss, beta=beta, temperature=temperature)
        soft = t2 * div.sum()
        hard = _hard_sum(z, y[i:j], alpha) if y is not None else None
        objective = soft if alpha == 0 else (1 - alpha) * soft + alpha * hard
        return objective, soft, hard

    return _run(h_s, student_weight, student_bias, per_chunk, chunk_size, vocab, h_s.shape[0], y is not None)


def chunked_topk_kd_loss(student_hidden, student_weight, topk_values, topk_indices, *, temperature=1.0, mask=None,
                         labels=None, alpha=0.0, vocab_size=None, chunk_size=1024, student_bias=None) -> dict:
    """``losses.topk_kd_loss`` from the student's last hidden states, ``chunk_size`` positions at a time.

    Teacher ``p = softmax(topk_values / T)`` over its k kept entries (e.g. from a logit cache),
    student ``log q = log_softmax(z_S / T)`` over the true vocabulary gathered at ``topk_indices``:
    ``soft = T² · mean sum_j p_j (log p_j - log q_{i_j})``; ``hard`` and ``loss`` as in
    ``chunked_kd_loss``. ``topk_values`` / ``topk_indices`` ``(..., k)`` (any float / integer
    dtype: bf16 values and uint16 indices from the cache are fine).
    """
    temperature, alpha = checks.temperature(temperature), checks.weight("alpha", alpha)
    vocab, mask, labels = _check_inputs(student_hidden, student_weight, student_bias, vocab_size, chunk_size,
                                        mask, labels)
    idx = _check_cache(topk_values, topk_indices, student_hidden, vocab, alpha, labels)
    h_s, vals, idx = _rows(student_hidden, mask), _rows(topk_values, mask), _rows(idx, mask)
    y = _rows(labels, mask, width=False)
    t2 = temperature * temperature

    def per_chunk(z, i, j):
        soft = t2 * losses.topk_divergence(z, vals[i:j], idx[i:j], temperature=temperature).sum()
        hard = _hard_sum(z, y[i:j], alpha) if y is not None else None
        objective = soft if alpha == 0 else (1 - alpha) * soft + alpha * hard
        return objective, soft, hard

    return _run(h_s, student_weight, student_bias, per_chunk, chunk_size, vocab, h_s.shape[0], y is not None)
