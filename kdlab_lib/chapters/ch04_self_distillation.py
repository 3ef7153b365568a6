"""Chapter 04's experiments: self-distillation, born-again networks (Furlanello et al. 2018).

Generation 0 learns from the labels; generation k, of the *same* architecture and
a fresh random start, learns from generation k-1's soft targets (and, with
``alpha > 0``, from the labels too). Per generation we measure the test error
(MNIST) or held-out perplexity (the tiny GPT-2 family), the ensemble of the
generations so far (the mean of their softmax outputs: BAN's "BANE"), and the
top-1 agreement with the previous generation (Stanton et al. 2021: a student can
beat its teacher precisely because it does not copy it).

``corrupt_labels`` flips a seeded, exact share of the training labels so the
whole run can be repeated on noisy labels.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..core import config, datasets, metrics, models, train, train_text
from ..core.tables import Bullets
from . import ch03_gpt2 as ch03

FURLANELLO_2018 = {  # Born-Again Networks (Furlanello et al., ICML 2018), Table 2: CIFAR-100 test error (%)
    "source": "Furlanello et al. 2018, Born-Again Neural Networks, Table 2 (CIFAR-100 test error, %)",
    "columns": ["teacher (generation 0)", "BAN-1", "BAN-2", "BAN-3"],
    "DenseNet-112-33": [18.25, 17.61, 17.22, 16.59],
    "DenseNet-90-60": [17.69, 16.62, 16.44, 16.72],   # generation 3 worse than generation 2
    "DenseNet-80-80": [17.16, 16.26, 16.30, 15.5],    # generation 2 worse than generation 1
}


# ---------------------------------------------------------------- building blocks

def corrupt_labels(labels: torch.Tensor, share: float, seed: int = 0, n_classes: int = 10) -> tuple:
    """Replace exactly ``round(share · N)`` labels, chosen at random (seeded), by a *different*
    class drawn uniformly from the other ``n_classes - 1``. Returns ``(noisy_labels, flipped)``,
    ``flipped`` a boolean mask of the changed examples. The input is not modified."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    n = len(labels)
    k = round(share * n)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=gen)[:k]                           # (k,) which examples
    offset = torch.randint(1, n_classes, (k,), generator=gen)             # (k,) in 1..C-1: never the same class
    noisy = labels.clone()
    noisy[pick] = (labels[pick] + offset) % n_classes
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[pick] = True
    return noisy, flipped


def ensemble_probs(logits: list) -> torch.Tensor:
    """The ensemble of several models: the mean of their softmax outputs, ``(N, C)`` (or ``(..., V)``)."""
    if not logits:
        raise ValueError("an ensemble needs at least one model's logits")
    shapes = {tuple(x.shape) for x in logits}
    if len(shapes) != 1:
        raise ValueError(f"every model's logits must have the same shape, got {sorted(shapes)}")
    return torch.stack([x.float().softmax(-1) for x in logits]).mean(0)


def generation_targets(previous, data: TensorDataset) -> torch.Tensor:
    """What generation k learns from: generation k-1's logits on the training inputs ``(N, C)``."""
    return metrics.predict(previous, data)


# ----------------------------------------------------------------------- MNIST

@dataclass
class SelfBudget:
    hidden: tuple = (800, 800)   # chapter 01's student (Hinton's small net); BAN used DenseNets/ResNets
    epochs: int = 8              # per generation; BAN trained each generation to convergence
    n_train: int = 50_000        # bench: the training split without the 10k validation images; notebook: 10k
    lr: float = 1e-3
    batch_size: int = 128
    temperature: float = 1.0     # BAN matched the teacher's plain softmax (T = 1)
    alpha: float = 0.0           # weight of the labels for generations >= 1 (BAN: 0, soft targets only)
    generations: int = 4         # generation 0 (labels) + 3 born-again (BAN reported 3 after the teacher)
    noise: float = 0.3           # share of training labels flipped in the noisy run
    n_test: int = 10_000


def budget(**overrides) -> SelfBudget:
    """The bench budget (4 generations of the 800-800 MLP), or a tiny one in quick mode."""
    quick = SelfBudget(hidden=(64, 64), epochs=1, n_train=1_000, n_test=1_000, generations=3)
    return replace(config.budget(SelfBudget(), quick), **overrides)


def notebook_budget(**overrides) -> SelfBudget:
    """The notebook's live budget: the bench's on a fifth of the examples (a generation of 800-800
    on 10,000 images takes about 7 s on one core)."""
    b = budget(**overrides)
    return b if config.QUICK else replace(b, n_train=overrides.get("n_train", 10_000))


def _cfg(b: SelfBudget, seed: int) -> train.DistillConfig:
    return train.DistillConfig(epochs=b.epochs, lr=b.lr, batch_size=b.batch_size, max_shift=0, seed=seed,
                               temperature=b.temperature, alpha=b.alpha)


def train_generation(b: SelfBudget, data: TensorDataset, targets=None, seed: int = 0, progress: bool = True,
                     desc: str = "generation"):
    """One generation: a fresh ``models.mlp(b.hidden)`` trained on labels (``targets`` None) or on
    ``distillation_loss`` against ``targets``, the previous generation's logits on ``data``."""
    config.seed_everything(seed)
    model = models.mlp(b.hidden)
    if targets is None:
        train.fit(model, data, _cfg(b, seed), progress=progress, desc=desc)
        model.kd_record = {"teacher": None, "epochs": b.epochs, "n_train": len(data)}   # learnt from the labels
    else:
        train.distill(model, targets, data, _cfg(b, seed), progress=progress, desc=desc)
    return model.eval()


def test_split(b: SelfBudget) -> TensorDataset:
    """The notebook's test digits: ``b.n_test`` of the official test set (seed 0)."""
    return datasets.take(datasets.load_mnist("test"), b.n_test, seed=0)


def _score(k: int, logits: torch.Tensor, earlier: list, y: torch.Tensor) -> dict:
    """Generation ``k``'s row: test errors (and %), the ensemble of generations 0..k, agreement with k-1."""
    errors = metrics.error_count(logits, y)
    return {"generation": k, "test_errors": errors, "test_error_pct": 100 * errors / len(y),
            "ensemble_errors": metrics.error_count(ensemble_probs(earlier + [logits]).log(), y),
            "agreement_with_previous": metrics.agreement(logits, earlier[-1]) if earlier else None}


def born_again(b: SelfBudget, seed: int = 0, noise: float = 0.0, progress: bool = True, data=None,
               test=None) -> dict:
    """Born-again generations on MNIST: ``b.generations`` MLPs of one architecture, each from its
    predecessor's soft targets. With ``noise > 0`` a seeded share of the training labels is flipped
    first (the test labels stay clean). Returns per-generation rows, the test logits and the models."""
    if b.generations < 1:
        raise ValueError(f"generations must be >= 1 (generation 0 learns from the labels), got {b.generations}")
    if data is None:
        data = datasets.take(datasets.load_mnist("train"), b.n_train, seed=0)
    if test is None:
        test = datasets.take(datasets.load_mnist("test"), b.n_test, seed=0)
    images, clean = data.tensors
    flipped = torch.zeros(len(clean), dtype=torch.bool)
    if noise:
        noisy, flipped = corrupt_labels(clean, noise, seed=1000 + seed)
        data = TensorDataset(images, noisy)
    rows, test_logits, gens, targets = [], [], [], None
    for k in range(b.generations):
        start = time.perf_counter()
        model = train_generation(b, data, targets, seed=seed + 1000 * k, progress=progress,
                                 desc=f"generation {k}")
        train_logits = generation_targets(model, data)                                # (N, 10)
        logits = metrics.predict(model, test)                                         # (n_test, 10)
        row = {**_score(k, logits, test_logits, test.tensors[1]), "seconds": time.perf_counter() - start}
        if noise:   # on the flipped training examples: does it predict the true label, or the wrong one it was given?
            pred = train_logits.argmax(-1)
            row["flipped_true_label_pct"] = 100 * float((pred[flipped] == clean[flipped]).float().mean())
            row["flipped_memorised_pct"] = 100 * float((pred[flipped] == data.tensors[1][flipped]).float().mean())
        rows.append(row)
        test_logits.append(logits)
        gens.append(model)
        targets = train_logits   # generation k+1 learns from this generation, never from generation 0
    return {"rows": rows, "test_logits": test_logits, "test_labels": test.tensors[1], "models": gens,
            "noise": noise, "seed": seed, "flipped": int(flipped.sum())}


# ------------------------------------------- the book's exercise 4: the reader's own generations

def student_maker(b: SelfBudget, seed: int = 0):
    """``make_student()`` for a born-again loop: the k-th call returns a fresh ``models.mlp(b.hidden)``
    seeded ``seed + 1000·k``, as ``born_again`` seeds generation k."""
    calls = itertools.count(1)

    def make_student():
        config.seed_everything(seed + 1000 * next(calls))
        return models.mlp(b.hidden)
    return make_student


def distiller(b: SelfBudget, data: TensorDataset, seed: int = 0, progress: bool = True):
    """``distill(student, teacher)`` for a born-again loop: ``b.epochs`` epochs of ``distillation_loss``
    (``b.temperature``, ``b.alpha``) on the teacher's logits on ``data``, the k-th call's batches in the order
    ``born_again`` gives generation k; the student comes back in eval mode,
    stamped with a ``kd_record`` (its teacher, epochs and examples) that ``exercises.check_generations``
    reads to check the design."""
    calls = itertools.count(1)

    def distill(student, teacher):
        k = next(calls)                     # the k-th call trains generation k, with born_again's seed for it
        targets = generation_targets(teacher, data)                                   # (N, 10)
        train.distill(student, targets, data, _cfg(b, seed + 1000 * k), progress=progress, desc=f"generation {k}")
        student.kd_record = {"teacher": teacher, "epochs": b.epochs, "n_train": len(data)}
        return student.eval()
    return distill


def born_again_loop(teacher, make_student, distill, generations: int) -> list:
    """The born-again loop of notebook 04's exercise (what ``exercises.check_born_again`` asks for): each
    generation a fresh ``make_student()``, distilled from the generation before it (the first from ``teacher``)::

        teacher_k = teacher
        for k in 1..generations:   student_k = make_student();  distill(student_k, teacher_k);  teacher_k = student_k
    """
    students = []
    for _ in range(generations):
        student = make_student()
        distill(student, students[-1] if students else teacher)
        students.append(student)
    return students


def score_generations(generations: list, test: TensorDataset) -> dict:
    """``born_again``'s rows and test logits for generations trained elsewhere (the reader's loop)."""
    if not generations:
        raise ValueError("score_generations needs at least generation 0")
    test_logits, rows = [], []
    for k, model in enumerate(generations):
        logits = metrics.predict(model, test)                                         # (n_test, 10)
        rows.append(_score(k, logits, test_logits, test.tensors[1]))
        test_logits.append(logits)
    return {"rows": rows, "test_logits": test_logits, "test_labels": test.tensors[1], "models": generations}


def summarise(runs: list) -> dict:
    """Mean and spread over seeds of each generation's test errors, ensemble errors and agreement."""
    out = []
    for k in range(len(runs[0]["rows"])):
        row = {"generation": k}
        for key in ("test_errors", "ensemble_errors", "agreement_with_previous", "flipped_true_label_pct"):
            values = [r["rows"][k][key] for r in runs if r["rows"][k].get(key) is not None]
            if values:
                row[key] = metrics.mean_std(values)
        out.append(row)
    return {"per_generation": out}



# ----------------------------------------------------------------- tiny GPT-2

def born_again_lm(vocab_model, train_blocks: torch.Tensor, val_blocks: torch.Tensor, b, generations: int = 3,
                  seed: int = 0, progress: bool = True) -> dict:
    """Born-again generations of a tiny GPT-2 (``ch03_gpt2.GptBudget`` ``b``) on Shakespeare:
    generation 0 with next-token training (``train_text.fit_clm``), generation k distilled from
    generation k-1 with ``train_text.distill_clm``; each from a fresh random start. ``vocab_model``
    only lends its vocabulary and special tokens (the shipped teacher). Scores from ``lm_scores``."""
    gens, seconds = [], []
    for k in range(generations):
        start = time.perf_counter()
        student = ch03.new_student_like(vocab_model, b, seed + 1000 * k)
        cfg = ch03.token_config(b, seed + 1000 * k)
        if k == 0:
            train_text.fit_clm(student, train_blocks, cfg, progress=progress, desc="generation 0")
        else:
            train_text.distill_clm(student, gens[-1], train_blocks, cfg, progress=progress,
                                   desc=f"generation {k}")
        gens.append(student.eval())
        seconds.append(time.perf_counter() - start)
    rows = lm_scores(gens, val_blocks)
    for row, s in zip(rows, seconds):
        row["seconds"] = s
    return {"rows": rows, "models": gens}


@torch.no_grad()
def lm_scores(lms: list, blocks: torch.Tensor, *, batch_size: int = 8) -> list:
    """Per generation k: held-out perplexity, perplexity of the ensemble of generations 0..k (mean of
    next-token probabilities), and top-1 next-token agreement with generation k-1. Streams over
    ``blocks`` so no (N, S, V) tensor is kept."""
    n = len(lms)
    nll, ens_nll, agree, count = [0.0] * n, [0.0] * n, [0.0] * n, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size]
        y = x[:, 1:].flatten()                                                        # (B·(S-1),)
        logits = [lm(input_ids=x).logits[:, :-1].float().flatten(0, 1) for lm in lms]  # n x (B·(S-1), V)
        running = torch.zeros_like(logits[0])
        for k, lg in enumerate(logits):
            p = lg.softmax(-1)
            running += p
            nll[k] += float(F.cross_entropy(lg, y, reduction="sum"))
            ens = running / (k + 1)
            ens_nll[k] += float(-ens.gather(-1, y[:, None]).clamp_min(1e-12).log().sum())
            if k:
                agree[k] += float((lg.argmax(-1) == logits[k - 1].argmax(-1)).sum())
        count += len(y)
    return [{"generation": k, "perplexity": math.exp(nll[k] / count),
             "ensemble_perplexity": math.exp(ens_nll[k] / count),
             "agreement_with_previous": agree[k] / count if k else None} for k in range(n)]


# ------------------------------------------------------------------ verdicts

def self_verdict(summary: dict) -> str:
    """Does the last born-again generation beat generation 0 by more than the noise (chapter 01's rule: two
    standard deviations of the noisier generation over seeds)?"""
    rows = summary["per_generation"]
    first, last = rows[0]["test_errors"], rows[-1]["test_errors"]
    diff = first["mean"] - last["mean"]
    word = "fewer" if diff > 0 else "more"
    return (Bullets(f"generation {len(rows) - 1} makes {abs(diff):.1f} {word} test errors than generation 0 "
            f"({last['mean']:.1f} vs {first['mean']:.1f}); two standard deviations over seeds are "
            f"{metrics.noise_band(first, last):.1f}, so the difference is "
            f"{'larger' if metrics.beyond_noise(first, last) else 'not larger'} than the noise"))
