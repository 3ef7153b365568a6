"""Argument checks for the losses, each a single call that returns the checked value.

A loss reads check -> compute -> reduce; the checks live here so the math stays in view
in ``losses``. Every failure is a ``ValueError`` whose message says what to fix, never a
silent NaN or a traceback from deep inside torch.
"""
from __future__ import annotations

import math
import numbers

import torch


def number(name: str, value, low: float | None = None, high: float | None = None,
           positive: bool = False) -> float:
    """A finite real number (a one-element tensor is accepted), optionally > 0 or in [low, high]."""
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


def temperature(value) -> float:
    """T > 0."""
    return number("temperature", value, positive=True)


def weight(name: str, value) -> float:
    """A mixing weight such as alpha or beta, in [0, 1]."""
    return number(name, value, 0.0, 1.0)


def logits(name: str, x) -> torch.Tensor:
    """Finite floating point logits of shape ``(N, C)`` or ``(B, S, V)``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point logits, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (batch, classes) or (batch, seq, vocab), "
                         f"got shape {tuple(x.shape)}; add a batch dimension with "
                         f"logits.unsqueeze(0)")
    if x.shape[-1] < 1 or x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values; check the model's outputs "
                         f"(a diverged run or a missing normalisation)")
    return x


def mask(m, positions: torch.Size) -> torch.Tensor | None:
    """A boolean mask of shape ``positions`` that selects something (or None for 'all')."""
    if m is None:
        return None
    if not isinstance(m, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(m).__name__}")
    if m.shape != positions:
        raise ValueError(f"mask has shape {tuple(m.shape)} but the logits have positions "
                         f"{tuple(positions)} (the mask drops the last, vocabulary dimension)")
    if m.dtype != torch.bool:
        if m.is_floating_point() or not ((m == 0) | (m == 1)).all():
            raise ValueError("mask must be boolean (or 0/1 integers), e.g. attention_mask.bool()")
        m = m.bool()
    if not m.any():
        raise ValueError("mask selects no position: there is nothing to average over")
    return m


def pair(student, teacher, m=None, s_name: str = "student_logits", t_name: str = "teacher_logits"):
    """Student and teacher logits (or hidden states) of one shape; returns the checked ``mask``."""
    logits(s_name, student)
    logits(t_name, teacher)
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(f"vocabulary mismatch: {s_name} has {student.shape[-1]} classes but "
                         f"{t_name} has {teacher.shape[-1]}; teacher and student must share "
                         f"one label set / tokenizer")
    if student.shape != teacher.shape:
        raise ValueError(f"shape mismatch: {s_name} {tuple(student.shape)} vs "
                         f"{t_name} {tuple(teacher.shape)}")
    return mask(m, student.shape[:-1])


def labels(y, x: torch.Tensor) -> torch.Tensor:
    """Integer class indices with the positions of logits ``x`` (``-100`` = ignored)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices (dtype long), got {y.dtype}")
    if y.shape != x.shape[:-1]:
        raise ValueError(f"labels have shape {tuple(y.shape)} but the logits have positions "
                         f"{tuple(x.shape[:-1])}")
    counted = y != -100
    if not counted.any():
        raise ValueError("every label is -100 (ignored): there is nothing to average over")
    n_classes = x.shape[-1]
    bad = counted & ((y < 0) | (y >= n_classes))
    if bad.any():
        raise ValueError(f"labels must lie in [0, {n_classes - 1}] (or be -100 to ignore), "
                         f"found {y[bad][0].item()}")
    return y.long()


def topk(student_logits, values, indices, m=None) -> torch.Tensor | None:
    """A cached teacher's top-k ``values`` / ``indices`` ``(..., k)`` against the student's logits;
    returns the checked ``mask``."""
    logits("student_logits", student_logits)
    logits("topk_values", values)
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point():
        raise ValueError("topk_indices must be an integer torch.Tensor")
    if values.shape != indices.shape:
        raise ValueError(f"topk_values {tuple(values.shape)} and topk_indices "
                         f"{tuple(indices.shape)} must have the same shape")
    if values.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"the cached teacher covers positions {tuple(values.shape[:-1])} "
                         f"but the student has {tuple(student_logits.shape[:-1])}")
    vocab = student_logits.shape[-1]
    if values.shape[-1] > vocab:
        raise ValueError(f"k = {values.shape[-1]} exceeds the vocabulary size {vocab}")
    if (indices < 0).any() or (indices >= vocab).any():
        raise ValueError(f"topk_indices must lie in [0, {vocab - 1}] (the student's vocabulary); "
                         f"found {int(indices.min())}..{int(indices.max())}")
    return mask(m, student_logits.shape[:-1])


def loss_weights(**weights) -> dict[str, float]:
    """Loss weights: numbers >= 0, not all zero."""
    out = {k: number(k, v) for k, v in weights.items()}
    if any(v < 0 for v in out.values()) or not any(out.values()):
        raise ValueError(f"the weights must be >= 0 and not all zero, got {out}")
    return out


def divergence(name: str, known) -> str:
    """One of the known divergence names (``losses.DIVERGENCES``)."""
    if name not in known:
        raise ValueError(f"loss must be one of {tuple(known)}, got {name!r}")
    return name
