"""Training and distillation of the image models, epoch by epoch.

``distill_epoch`` is the lab's reference distillation loop, short enough to read in one go:
teacher logits without gradients, Hinton's loss, zero_grad / backward / step. ``fit`` and
``distill`` run it (or its hard-label twin) for several epochs with what a real run adds:
seeded shuffling and ±k-pixel jitter (in the loader, ``datasets.shuffled_batches``), Adam with
a one-cycle learning-rate schedule (stepped through ``after_step``), validation errors each
epoch, optional early stopping, a progress line and a returned ``History``. The teacher is a
live model (run on the same, possibly jittered, batch) or a tensor of its precomputed logits.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from . import checks, config, datasets, losses, metrics
from .progress import progress as progress_line


@dataclass
class FitConfig:
    epochs: int = 10
    batch_size: int = 128        # Hinton et al. 2015 do not say; 128 is a common choice
    lr: float = 1e-3             # peak of the one-cycle schedule (Hinton used SGD + momentum)
    weight_decay: float = 0.0
    max_shift: int = 2           # jitter in pixels; Hinton et al. jittered by up to 2 pixels
    seed: int = 0
    patience: int | None = None  # stop after this many epochs without a better val error


@dataclass
class DistillConfig(FitConfig):
    temperature: float = 4.0     # Hinton et al. found T >= 8 fine for 300+ units, 2.5-4 for 30
    alpha: float = 0.1           # weight of the hard labels; Hinton used a "considerably lower" weight


@dataclass
class History:
    """What a run did, epoch (or step) by epoch, plus its settings."""
    records: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    best_epoch: int | None = None

    def column(self, key: str) -> list:
        return [r[key] for r in self.records]

    @property
    def last(self) -> dict:
        return self.records[-1] if self.records else {}

    @property
    def seconds(self) -> float:
        return sum(self.column("seconds"))


# ------------------------------------------------------------------ one epoch

def distill_epoch(student: nn.Module, teacher: nn.Module | None, loader: Iterable, optimizer: torch.optim.Optimizer,
                  T: float, alpha: float, *, after_step: Callable[[], object] | None = None) -> float:
    """One epoch of knowledge distillation (Hinton et al. 2015); returns the example-weighted mean loss.

    ``loader`` yields ``(x, y)`` batches, or ``(x, y, teacher_logits)`` when the teacher's logits
    were computed once beforehand (``teacher`` may then be None). For each batch::

        z_T = teacher(x)                      eval mode, no gradient
        z_S = student(x)                      train mode
        loss = alpha · CE(z_S, y) + (1 - alpha) · T² · KL(softmax(z_T / T) || softmax(z_S / T))
        zero_grad, backward, step             (then ``after_step()``, e.g. a scheduler's step)
    """
    student.train()
    if teacher is not None:
        teacher.eval()                                          # no dropout, frozen batch-norm statistics
    device = next(student.parameters()).device
    total, count = 0.0, 0
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)        # (B, ...), (B,)
        if len(batch) == 3:
            t_logits = batch[2].to(device)                      # (B, C), precomputed
        else:
            with torch.no_grad():
                t_logits = teacher(x)                           # (B, C)
        s_logits = student(x)                                   # (B, C)
        loss = losses.distillation_loss(s_logits, t_logits, y, T, alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total += loss.item() * len(y)                           # a short last batch weighs less
        count += len(y)
    return total / count


def fit_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *,
              after_step: Callable[[], object] | None = None) -> float:
    """One epoch on the hard labels alone, ``CE(model(x), y)``; returns the example-weighted mean loss."""
    model.train()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y, *_ in loader:
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total, count = total + loss.item() * len(y), count + len(y)
    return total / count


# ------------------------------------------------------------------ several epochs

def fit(model: nn.Module, train_set: TensorDataset, cfg: FitConfig | None = None, *,
        val_set: TensorDataset | None = None, progress: bool = True, desc: str = "fit") -> History:
    """Train ``model`` on hard labels with cross-entropy; return its ``History``."""
    cfg = cfg or FitConfig()

    def epoch(loader, optimizer, after_step):
        return fit_epoch(model, loader, optimizer, after_step=after_step)

    return _epochs(model, train_set, cfg, epoch, None, val_set, progress, desc)


def distill(student: nn.Module, teacher, train_set: TensorDataset, cfg: DistillConfig | None = None,
            *, val_set: TensorDataset | None = None, progress: bool = True,
            desc: str = "distill") -> History:
    """Train ``student`` with ``distill_epoch`` (``alpha·CE + (1-alpha)·T²·KL(p_T || p_S)``).

    ``teacher`` is an ``nn.Module`` (run in eval mode on each, possibly jittered,
    batch) or a logits tensor ``(N, C)`` aligned with ``train_set`` (precomputed:
    fast, but then ``max_shift`` must be 0 since the inputs must match).
    """
    cfg = cfg or DistillConfig()
    checks.temperature(cfg.temperature), checks.weight("alpha", cfg.alpha)   # fail before training
    cached = teacher if isinstance(teacher, torch.Tensor) else None
    if cached is not None and cached.shape[0] != len(train_set):
        raise ValueError(f"precomputed teacher logits cover {cached.shape[0]} examples but "
                         f"the transfer set has {len(train_set)}")
    if cached is not None and cfg.max_shift:
        raise ValueError("precomputed teacher logits only fit the un-jittered images: "
                         "set max_shift=0 or pass the teacher model itself")
    live = None if cached is not None else teacher

    def epoch(loader, optimizer, after_step):
        return distill_epoch(student, live, loader, optimizer, cfg.temperature, cfg.alpha, after_step=after_step)

    return _epochs(student, train_set, cfg, epoch, cached, val_set, progress, desc)


def _epochs(model, train_set, cfg: FitConfig, run_epoch, targets, val_set, progress, desc) -> History:
    """``cfg.epochs`` seeded epochs of ``run_epoch(loader, optimizer, after_step)``: Adam, a one-cycle
    schedule stepped after every batch, validation errors per epoch, early stopping on them."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    gen = config.seed_everything(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, pct_start=0.15,
                                                total_steps=cfg.epochs * math.ceil(len(train_set) / cfg.batch_size))
    history = History(settings=asdict(cfg))
    best_err, best_state, stale = math.inf, None, 0
    bar = progress_line(range(cfg.epochs), desc=desc, enabled=progress, unit="epochs")
    for epoch in bar:
        start = time.perf_counter()
        loader = datasets.shuffled_batches(train_set, cfg.batch_size, gen, max_shift=cfg.max_shift, targets=targets)
        record = {"epoch": epoch + 1, "loss": run_epoch(loader, opt, sched.step),
                  "seconds": time.perf_counter() - start}
        if val_set is not None:
            record["val_errors"] = metrics.error_count(metrics.predict(model, val_set), val_set.tensors[1])
        history.records.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k not in ("epoch", "seconds")})
        if val_set is not None and cfg.patience is not None:
            if record["val_errors"] < best_err:
                best_err, stale, history.best_epoch = record["val_errors"], 0, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
