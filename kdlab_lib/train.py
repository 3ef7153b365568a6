"""Training and distillation loops with progress bars and a returned history.

``fit`` trains on hard labels; ``distill`` trains a student on
``distillation_loss`` against a teacher that is either a live model (run on
the same, jittered batch) or a tensor of precomputed teacher logits. Both share
one loop: seeded shuffling, optional ±k-pixel jitter, Adam with a one-cycle
learning-rate schedule, validation error each epoch, optional early stopping.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import config, datasets, losses, metrics


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
    """What a run did, epoch by epoch, plus its settings."""
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


def fit(model: nn.Module, train_set: TensorDataset, cfg: FitConfig | None = None, *,
        val_set: TensorDataset | None = None, progress: bool = True, desc: str = "fit") -> History:
    """Train ``model`` on hard labels with cross-entropy; return its ``History``."""
    cfg = cfg or FitConfig()

    def batch_loss(x, y, idx):
        return F.cross_entropy(model(x), y)

    return _loop(model, train_set, cfg, batch_loss, val_set, progress, desc)


def distill(student: nn.Module, teacher, train_set: TensorDataset, cfg: DistillConfig | None = None,
            *, val_set: TensorDataset | None = None, progress: bool = True,
            desc: str = "distill") -> History:
    """Train ``student`` on ``alpha·CE + (1-alpha)·T²·KL(p_T || p_S)`` (``losses.distillation_loss``).

    ``teacher`` is an ``nn.Module`` (run in eval mode on each, possibly jittered,
    batch) or a logits tensor ``(N, C)`` aligned with ``train_set`` (precomputed:
    fast, but then ``max_shift`` must be 0 since the inputs must match).
    """
    cfg = cfg or DistillConfig()
    losses.distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                             cfg.temperature, cfg.alpha)  # fail fast on a bad T or alpha
    if isinstance(teacher, torch.Tensor):
        if teacher.shape[0] != len(train_set):
            raise ValueError(f"precomputed teacher logits cover {teacher.shape[0]} examples but "
                             f"the transfer set has {len(train_set)}")
        if cfg.max_shift:
            raise ValueError("precomputed teacher logits only fit the un-jittered images: "
                             "set max_shift=0 or pass the teacher model itself")
        cached = teacher

        def teacher_logits(x, idx):
            return cached[idx].to(x.device)
    else:
        teacher.eval()

        @torch.no_grad()
        def teacher_logits(x, idx):
            return teacher(x).float()

    def batch_loss(x, y, idx):
        return losses.distillation_loss(student(x), teacher_logits(x, idx), y,
                                        cfg.temperature, cfg.alpha)

    return _loop(student, train_set, cfg, batch_loss, val_set, progress, desc)


def _loop(model, train_set, cfg, batch_loss, val_set, progress, desc) -> History:
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    gen = config.seed_everything(cfg.seed)
    dev = next(model.parameters()).device
    images, labels = train_set.tensors
    n = len(labels)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, pct_start=0.15,
                                                total_steps=cfg.epochs * steps_per_epoch)
    history = History(settings=asdict(cfg))
    best_err, best_state, stale = math.inf, None, 0
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        start, total = time.perf_counter(), 0.0
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x = datasets.jitter(images[idx], cfg.max_shift, gen).to(dev)
            loss = batch_loss(x, labels[idx].to(dev), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        record = {"epoch": epoch + 1, "loss": total / n, "seconds": time.perf_counter() - start}
        if val_set is not None:
            record["val_errors"] = metrics.error_count(metrics.predict(model, val_set),
                                                       val_set.tensors[1])
        history.records.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
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
