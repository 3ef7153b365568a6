"""The fast, memory-lean training step of ``kdlab distill`` and ``kdlab bench gpu``.

Set-up (shapes and kernels the hardware likes):

- ``pad_vocab(model, 64)``: the embeddings and output projection padded to a multiple of
  64 rows (GPT-2: 50,257 -> 50,304, as nanoGPT does), the padded rows zero. Every loss
  here cuts logits to the true vocabulary before its softmax (``true_logits``), so the
  padded entries never receive probability, nor a gradient; ``unpadded_copy`` gives the
  model back with its own vocabulary, for saving and scoring.
- ``adamw``: AdamW, fused where the parameters live on a GPU.
- ``maybe_compile``: ``torch.compile`` of the transformer body, as an option.

One step's loss terms ``{"loss", "soft", "hard"}``, the same numbers in each mode
(``train_text.token_kd_terms``: position t predicts token t+1, the last position is dropped):

- ``full_terms``: full logits of teacher and student (the plain path);
- ``chunked_terms``: from last hidden states, a chunk of positions at a time (``chunked_loss``);
- ``cached_terms``: against a teacher stored as top-k logits (``logit_cache``), chunked or not.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..core import losses, train_text
from . import chunked_loss

# ------------------------------------------------------------------ model set-up

def pad_vocab(model, multiple: int = 64) -> int:
    """Pad ``model``'s embeddings and output projection to a multiple of ``multiple`` rows.

    The new rows are zero; returns the true vocabulary size (to cut logits with). A model whose
    vocabulary is already a multiple is left alone. New parameter objects are made: pad before
    building the optimiser.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    emb = model.get_input_embeddings().weight
    vocab = emb.shape[0]
    if vocab % multiple:
        cuda = [emb.device] if emb.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):      # the new rows' random init must not shift the run's draws
            model.resize_token_embeddings(vocab, pad_to_multiple_of=multiple, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[vocab:].zero_()
            head = model.get_output_embeddings()
            head.weight[vocab:].zero_()
            if getattr(head, "bias", None) is not None:
                head.bias[vocab:].zero_()
    return vocab


def unpadded_copy(model, vocab_size: int):
    """A copy of ``model`` with its first ``vocab_size`` embedding and output rows only (on the CPU)."""
    if model.get_input_embeddings().weight.shape[0] == vocab_size:
        return model
    clone = copy.deepcopy(model).cpu()
    clone.resize_token_embeddings(vocab_size, mean_resizing=False)
    return clone


def true_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``logits[..., :vocab_size]``: the padded entries dropped before any softmax."""
    return logits[..., :vocab_size]


def adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused kernel (one launch for every parameter) when ``device`` is a GPU."""
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))


def maybe_compile(model, enabled: bool):
    """``torch.compile`` the transformer body in place (``model.base_model.compile()``) when ``enabled``.

    The body is where the time goes; the output projection is one matrix product, done by the
    model's head or by the chunked loss. In place, so parameter names, ``save_pretrained`` and
    Accelerate's wrappers see the same model. Returns ``model``.
    """
    if enabled:
        model.base_model.compile()
    return model


def _inner(model):
    """The model inside a DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def output_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output projection's ``(weight (V', H), bias (V',) or None)``, unwrapped from DDP / compile."""
    head = _inner(model).get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def last_hidden(model, x: torch.Tensor) -> torch.Tensor:
    """Last hidden states ``(B, S, H)``, after the final norm, without projecting onto the vocabulary.

    With gradients: through ``model``'s own forward (so a DDP wrapper sees the call) asking for the
    hidden states and one position's logits (every layer's output is kept for backward anyway).
    Without (a teacher): the body alone, so no layer's output outlives its use.
    """
    if torch.is_grad_enabled():
        try:
            out = model(input_ids=x, output_hidden_states=True, logits_to_keep=1)
        except TypeError:   # a model without logits_to_keep: it projects every position
            out = model(input_ids=x, output_hidden_states=True)
        return out.hidden_states[-1]
    body = _inner(model).base_model
    out = body(input_ids=x)
    if not hasattr(out, "last_hidden_state"):
        raise ValueError(f"{type(_inner(model)).__name__} has no separate transformer body (base_model) "
                         f"returning last_hidden_state; the chunked path needs one")
    return out.last_hidden_state


# ------------------------------------------------------------------ the three step modes

def full_terms(student, teacher, x: torch.Tensor, cfg: train_text.TokenKDConfig, vocab_size: int) -> dict:
    """``train_text.token_kd_terms`` on full logits (cut to the true vocabulary); the teacher without gradient."""
    with torch.no_grad():
        t_logits = true_logits(teacher(input_ids=x).logits, vocab_size)          # (B, S, V)
    return train_text.token_kd_terms(true_logits(student(input_ids=x).logits, vocab_size), t_logits, x,
                                     temperature=cfg.temperature, alpha=cfg.alpha, **cfg.kd())


def chunked_terms(student, teacher, x: torch.Tensor, cfg: train_text.TokenKDConfig, vocab_size: int,
                  chunk_size: int = 1024) -> dict:
    """The same terms from last hidden states, ``chunk_size`` positions at a time."""
    with torch.no_grad():
        h_t = last_hidden(teacher, x)[:, :-1]                                     # (B, S-1, Ht)
    w_t, b_t = output_head(teacher)
    h_s = last_hidden(student, x)[:, :-1]                                         # (B, S-1, Hs)
    w_s, b_s = output_head(student)
    return chunked_loss.chunked_kd_loss(h_s, w_s, h_t, w_t, loss=cfg.loss, beta=cfg.beta,
                                        temperature=cfg.temperature, labels=x[:, 1:], alpha=cfg.alpha,
                                        top_k=cfg.top_k, vocab_size=vocab_size, chunk_size=chunk_size,
                                        student_bias=b_s, teacher_bias=b_t)


def cached_terms(student, x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                 cfg: train_text.TokenKDConfig, vocab_size: int, chunk_size: int | None = None) -> dict:
    """The terms against cached top-k logits ``values``/``indices`` ``(B, S-1, k)`` of blocks ``x`` ``(B, S)``.

    ``cfg.top_k`` (if set) keeps the first ``top_k`` of the ``k`` cached entries (they are sorted);
    ``chunk_size`` computes from hidden states a chunk at a time, else from full logits.
    """
    if cfg.top_k:
        values, indices = values[..., :cfg.top_k], indices[..., :cfg.top_k]
    t = cfg.temperature
    if chunk_size:
        w_s, b_s = output_head(student)
        return chunked_loss.chunked_topk_kd_loss(last_hidden(student, x)[:, :-1], w_s, values, indices,
                                                 temperature=t, labels=x[:, 1:], alpha=cfg.alpha,
                                                 vocab_size=vocab_size, chunk_size=chunk_size, student_bias=b_s)
    s_logits = true_logits(student(input_ids=x).logits, vocab_size)[:, :-1]     # (B, S-1, V)
    with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.alpha > 0):
        hard = F.cross_entropy(s_logits.flatten(0, 1).float(), x[:, 1:].flatten())
    out = {"soft": losses.topk_kd_loss(s_logits, values, indices.long(), t), "hard": hard}
    out["loss"] = cfg.alpha * hard + (1 - cfg.alpha) * out["soft"] if cfg.alpha > 0 else out["soft"]
    return out
