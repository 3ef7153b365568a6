"""How good is a model, and how close is a student to its teacher?

Functions take logits ``(N, C)`` (or probabilities where named) and integer
labels ``(N,)``; ``predict`` turns a model and a data set into logits.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from . import config, losses, text
from .tables import Table


@torch.no_grad()
def predict(model: torch.nn.Module, data, *, batch_size: int = 64) -> torch.Tensor:
    """Logits ``(N, C)`` of ``model`` (in eval mode) on a ``TensorDataset`` or an image tensor."""
    images = data.tensors[0] if isinstance(data, TensorDataset) else data
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(dev)).float().cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (N, C), got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")


def _check_classes(labels: torch.Tensor, n_classes: int) -> None:
    """Labels used as class indices (to count or index per class) must be integers in [0, n_classes)."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}) (one per class), got values from "
                         f"{int(labels.min())} to {int(labels.max())}")


def error_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of examples whose arg-max prediction differs from the label."""
    _check(logits, labels)
    return int((logits.argmax(-1) != labels).sum())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples predicted correctly."""
    return 1.0 - error_count(logits, labels) / len(labels)


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Top-1 agreement (fidelity, Stanton et al. 2021): share of inputs where arg-maxes match."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError("student and teacher logits must have the same shape")
    return float((student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean())


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float = 1.0) -> float:
    """Mean ``KL(p_T || p_S)`` at temperature T (nats), a softer fidelity measure."""
    return float(losses.forward_kl(student_logits, teacher_logits, temperature=temperature))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017; torchmetrics' L1 form).

    ``ECE = sum_b |B_b|/N · |acc(B_b) - conf(B_b)|`` where the confidence of an
    example is its largest probability and bin b holds confidences in
    ``((b-1)/n_bins, b/n_bins]``. ``probs`` is ``(N, C)`` and rows sum to 1.
    """
    _check(probs, labels)
    tol = max(1e-3, torch.finfo(probs.dtype).eps) if probs.is_floating_point() else 1e-3
    probs, labels = probs.detach().float().cpu(), labels.cpu()  # any float dtype or device
    if (probs < 0).any() or not torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=tol):
        raise ValueError("probs must be probabilities (non-negative rows summing to 1); "
                         "pass softmax(logits), not the logits")
    conf, pred = probs.max(-1)
    return confidence_bins(conf, pred == labels, n_bins)["ece"]


def per_class_errors(logits: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None
                     ) -> torch.Tensor:
    """Errors per true class, shape ``(C,)``."""
    _check(logits, labels)
    n_classes = n_classes or logits.shape[-1]
    _check_classes(labels, n_classes)
    wrong = (logits.argmax(-1) != labels).long()
    return torch.zeros(n_classes, dtype=torch.long).index_add_(0, labels, wrong)


def confusion_pairs(logits: torch.Tensor, labels: torch.Tensor, top: int = 3) -> list[tuple[int, int, int]]:
    """The most frequent (true, predicted, count) mistakes."""
    _check(logits, labels)
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    pred = logits.argmax(-1)
    wrong = pred != labels
    c = logits.shape[-1]
    counts = torch.zeros(c * c, dtype=torch.long).index_add_(
        0, labels[wrong] * c + pred[wrong], torch.ones(int(wrong.sum()), dtype=torch.long))
    order = counts.argsort(descending=True)[:top]
    return [(int(i) // c, int(i) % c, int(counts[i])) for i in order if counts[i] > 0]


def gap_table(logits: dict[str, torch.Tensor], labels: torch.Tensor, *, teacher: str,
              students: list[str] | None = None, class_names=None) -> Table:
    """Per-class errors of each model, and each student's gap to the teacher.

    ``logits`` maps a model's name to its ``(N, C)`` logits on the same data.
    Rows are classes sorted by the largest student-teacher gap first; a gap column ("student − teacher")
    is the student's errors minus the teacher's (negative: the student beats the teacher on that class).
    """
    if teacher not in logits:
        raise ValueError(f"teacher {teacher!r} is not among {list(logits)}")
    students = students or [k for k in logits if k != teacher]
    errs = {k: per_class_errors(v, labels) for k, v in logits.items()}
    c = len(errs[teacher])
    names = class_names or [str(i) for i in range(c)]
    rows = []
    for i in range(c):
        row = [names[i], int((labels == i).sum())] + [int(errs[k][i]) for k in [teacher, *students]]
        row += [int(errs[s][i] - errs[teacher][i]) for s in students]
        rows.append(row)
    if students:
        rows.sort(key=lambda r: -max(r[-len(students):]))
    headers = ["class", "n", f"{teacher} errors", *(f"{s} errors" for s in students),
               *(f"{s} − {teacher}" for s in students)]
    total = ["all", len(labels)] + [int(errs[k].sum()) for k in [teacher, *students]]
    total += [int(errs[s].sum() - errs[teacher].sum()) for s in students]
    return Table(headers, rows + [total], title="Errors per class (sorted by the largest gap)")


def confidence_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> dict:
    """The reliability-diagram bins of ``expected_calibration_error``, from each prediction's
    confidence ``(N,)`` (its top probability) and whether it was right ``(N,)``.

    Equal-width bins, bin b (1-based) holding confidences in ``((b-1)/n_bins, b/n_bins]`` (a confidence
    of exactly 0 goes to the first bin). Returns per bin: ``count``, ``accuracy`` and mean
    ``confidence`` (NaN where a bin is empty), the bin ``edges`` ``(n_bins + 1,)`` and the ``ece``
    ``sum_b |B_b|/N · |acc(B_b) - conf(B_b)|``. Works from confidences alone, so a language model's
    ECE can be accumulated position by position without keeping ``(N, V)`` probabilities.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = confidence.detach().float().cpu().flatten(), correct.detach().float().cpu().flatten()
    if conf.shape != correct.shape or len(conf) == 0:
        raise ValueError(f"confidence {tuple(confidence.shape)} and correct {tuple(correct.shape)} must be "
                         f"non-empty and of one shape")
    if (conf < 0).any() or (conf > 1 + 1e-6).any():
        raise ValueError("confidences must lie in [0, 1] (probabilities, not logits)")
    bins = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)  # (N,)
    count = torch.zeros(n_bins).index_add_(0, bins, torch.ones_like(conf))
    hits = torch.zeros(n_bins).index_add_(0, bins, correct)
    total_conf = torch.zeros(n_bins).index_add_(0, bins, conf)
    nan = torch.full((n_bins,), float("nan"))
    return {"count": count, "accuracy": torch.where(count > 0, hits / count.clamp_min(1), nan),
            "confidence": torch.where(count > 0, total_conf / count.clamp_min(1), nan),
            "edges": torch.linspace(0, 1, n_bins + 1),
            "ece": float((hits - total_conf).abs().sum() / len(conf))}


def ece_at(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = 15) -> float:
    """ECE of ``softmax(logits / T)``."""
    return expected_calibration_error(torch.softmax(logits.float() / temperature, -1), labels, n_bins)


@torch.no_grad()
def _nll_at(z: torch.Tensor, y: torch.Tensor, beta: float, chunk: int = 1024) -> float:
    """Mean NLL of ``softmax(beta · z)``, a chunk of rows at a time (no ``(N, C)`` temporaries kept)."""
    total = 0.0
    for i in range(0, len(z), chunk):
        total += float(F.cross_entropy(z[i:i + chunk] * beta, y[i:i + chunk], reduction="sum"))
    return total / len(z)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, t_min: float = 0.05, t_max: float = 20.0,
                    tol: float = 1e-4) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of ``softmax(logits / T)``
    on *validation* ``logits`` ``(N, C)`` and ``labels``. One scalar, so the arg-max (and the accuracy)
    is unchanged.

    The NLL is convex in ``beta = 1 / T`` (a log-sum-exp of linear functions, minus a linear one), so a
    golden-section search over ``beta`` in ``[1 / t_max, 1 / t_min]`` finds the minimum to ``tol``,
    with one chunked pass over the logits per step and no autograd (a vocabulary-wide LM's logits
    stay affordable)."""
    _check(logits, labels)
    z, y = logits.detach().float().cpu(), labels.cpu()
    if not torch.isfinite(z).all():
        raise ValueError("logits must be finite to fit a temperature")
    a, b = 1.0 / t_max, 1.0 / t_min
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll_at(z, y, c), _nll_at(z, y, d)
    while b - a > tol * max(1.0, (a + b) / 2):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll_at(z, y, c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll_at(z, y, d)
    return 1.0 / ((a + b) / 2)


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """``confidence_bins`` of probabilities ``(N, C)``: the data of a reliability diagram, with the
    same binning (and the same ``ece``) as ``expected_calibration_error``."""
    _check(probs, labels)
    conf, pred = probs.detach().float().cpu().max(-1)
    return confidence_bins(conf, pred == labels.cpu(), n_bins)


def ood_auroc(confidence_in: torch.Tensor, confidence_out: torch.Tensor) -> float:
    """How well a model's top probability tells in-distribution inputs from out-of-distribution ones:
    the chance that a random in-distribution input gets a higher confidence than a random
    out-of-distribution one (ties count a half). 1.0: perfectly separated; 0.5: no better than a coin."""
    a, b = confidence_in.detach().float().flatten(), confidence_out.detach().float().flatten()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("both sets of confidences must be non-empty")
    both = torch.cat([a, b])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=both.dtype)
    for v in both[order].unique_consecutive():   # average ranks over ties (Mann-Whitney U)
        tie = both == v
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    u = float(ranks[:len(a)].sum()) - len(a) * (len(a) + 1) / 2
    return u / (len(a) * len(b))


def disagreements(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Where a student's top-1 prediction departs from its teacher's, who is right (Stanton et al. 2021:
    a student that beats its teacher does so on exactly these inputs)."""
    _check(student_logits, labels)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError("student and teacher logits must have the same shape")
    s, t = student_logits.argmax(-1), teacher_logits.argmax(-1)
    differ = s != t
    return {"n": len(labels), "disagree": int(differ.sum()), "student right": int((differ & (s == labels)).sum()),
            "teacher right": int((differ & (t == labels)).sum()),
            "neither": int((differ & (s != labels) & (t != labels)).sum())}


def category_gap(per_example: dict[str, torch.Tensor], categories: torch.Tensor, *, teacher: str,
                 students: list[str] | None = None, names=None, measure: str = "error rate",
                 lower_is_better: bool = True, min_count: int = 1, digits: int = 3) -> Table:
    """Per-category gap table, for any chapter and any kind of category.

    ``per_example`` maps a model's name to one value per example ``(N,)`` on the same examples: 0/1
    mistakes (error rate per category), per-token losses (mean nats per category), ...;
    ``categories`` ``(N,)`` gives each example's category id (0..K-1), ``names`` their names.
    A row per category: ``[name, n, mean of the teacher, mean of each student, gap of each
    student]``, the gap signed so that **positive means the student falls short**: ``student -
    teacher`` when lower is better, ``teacher - student`` otherwise. Rows are sorted by the largest
    gap of any student first; categories with fewer than ``min_count`` examples are left out of the
    rows (never out of the final ``all`` row).
    """
    if teacher not in per_example:
        raise ValueError(f"teacher {teacher!r} is not among {list(per_example)}")
    students = [k for k in per_example if k != teacher] if students is None else list(students)
    missing = [s for s in students if s not in per_example]
    if missing:
        raise ValueError(f"students {missing} are not among {list(per_example)}")
    categories = categories.long().flatten()
    cols = [teacher, *students]
    values = {k: per_example[k].detach().float().cpu().flatten() for k in cols}
    for k, v in values.items():
        if v.shape != categories.shape:
            raise ValueError(f"{k}: {tuple(v.shape)} values but {tuple(categories.shape)} categories")
    k_max = int(categories.max()) + 1 if len(categories) else 0
    names = list(names) if names is not None else [str(i) for i in range(k_max)]
    if len(names) < k_max:
        raise ValueError(f"{k_max} categories but only {len(names)} names")
    count = torch.bincount(categories, minlength=len(names))
    means = {k: torch.bincount(categories, weights=v, minlength=len(names)) / count.clamp_min(1)
             for k, v in values.items()}
    sign = 1.0 if lower_is_better else -1.0
    rows = []
    for i, name in enumerate(names):
        if int(count[i]) < max(1, min_count):
            continue
        row = [name, int(count[i])] + [float(means[k][i]) for k in cols]
        rows.append(row + [sign * float(means[s][i] - means[teacher][i]) for s in students])
    if students:
        rows.sort(key=lambda r: -max(r[-len(students):]))
    overall = [float(values[k].mean()) for k in cols]
    total = ["all", len(categories)] + overall + [sign * (overall[1 + j] - overall[0]) for j in range(len(students))]
    headers = ["category", "n", *(f"{k} {measure}" for k in cols), *(f"gap {s}" for s in students)]
    return Table(headers, rows + [total], digits=digits,
                 title=f"{measure} per category, sorted by the largest gap (positive: the student falls short)")


def evaluate(model: torch.nn.Module, dataset: TensorDataset) -> dict:
    """Errors, accuracy and ECE of ``model`` on ``dataset``."""
    logits = predict(model, dataset)
    labels = dataset.tensors[1]
    return {"errors": error_count(logits, labels), "n": len(labels),
            "accuracy": accuracy(logits, labels),
            "ece": expected_calibration_error(F.softmax(logits, -1), labels)}


def mean_std(values) -> dict:
    """``{"mean", "std", "values"}`` of a list of per-seed numbers (sample standard deviation; 0 for one)."""
    values = [float(v) for v in values]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def noise_band(a: dict, b: dict, k: float = 2.0) -> float:
    """Chapter 01's rule of thumb for two per-seed summaries (``mean_std``): ``k`` standard deviations of the
    noisier one. A difference of means inside this band cannot be told from run-to-run noise."""
    return k * max(a["std"], b["std"])


def beyond_noise(a: dict, b: dict, k: float = 2.0) -> bool:
    """True when the means of two per-seed summaries differ by more than ``noise_band(a, b, k)``."""
    return abs(a["mean"] - b["mean"]) > noise_band(a, b, k)


def versus(a: dict, b: dict, digits: int = 1) -> str:
    """Two per-seed summaries in words, with chapter 01's rule:
    ``"84.0 vs 140.3 (-40%; beyond two std, 6.0)"`` (``a``'s mean, ``b``'s, the relative change, and whether
    the difference is beyond ``noise_band(a, b)``)."""
    where = "beyond" if beyond_noise(a, b) else "inside"
    change = f"{a['mean'] / b['mean'] - 1:+.0%}; " if b["mean"] else ""
    return (f"{a['mean']:.{digits}f} vs {b['mean']:.{digits}f} ({change}{where} two std, "
            f"{noise_band(a, b):.{digits}f})")


def gap_closed(teacher_errors: float, scratch_errors: float, distilled_errors: float) -> float:
    """Share of the scratch-to-teacher gap that distillation closes: (S - D) / (S - T)."""
    if scratch_errors == teacher_errors:
        return float("nan")
    return (scratch_errors - distilled_errors) / (scratch_errors - teacher_errors)


# ------------------------------------------------------- dark-knowledge views

def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``H(p) = -sum_c p_c log p_c`` in nats, over the last dim."""
    if probs.dim() == 0 or probs.shape[-1] == 0:
        raise ValueError(f"probs must have at least one class on its last dim, got shape {tuple(probs.shape)}")
    if (probs < 0).any():
        raise ValueError("probs must be probabilities (>= 0), not logits or log-probabilities: apply softmax first")
    return -(torch.special.xlogy(probs, probs)).sum(-1)


def class_similarity(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's averaged soft targets per true class, ``(C, C)``.

    ``M[c, k] = mean over examples x of class c of p_T(k | x)``: row c says how
    much a c looks like each other class to the teacher at temperature T.
    """
    _check(logits, labels)
    _check_classes(labels, logits.shape[-1])
    probs = losses.soften(logits.float(), temperature)
    c = logits.shape[-1]
    sums = torch.zeros(c, c).index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=c).clamp(min=1).unsqueeze(1)
    return sums / counts


def confusable_pairs(similarity: torch.Tensor, top: int = 5) -> list[tuple[int, int, float]]:
    """The unordered class pairs with the largest symmetric similarity ``(M[a,b] + M[b,a]) / 2``."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (C, C) matrix, got {tuple(similarity.shape)}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    sym = (similarity + similarity.T) / 2
    c = sym.shape[0]
    pairs = [(a, b, float(sym[a, b])) for a in range(c) for b in range(a + 1, c)]
    return sorted(pairs, key=lambda p: -p[2])[:top]


def ambiguous_examples(logits: torch.Tensor, k: int = 10) -> list[int]:
    """Indices of the ``k`` inputs the model is least sure about (highest entropy at T = 1)."""
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (N, C), got {tuple(logits.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k} (all of them if k exceeds the number of inputs)")
    ent = entropy(torch.softmax(logits.float(), -1))
    return ent.argsort(descending=True)[:k].tolist()


def soft_gradient_norms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        temperatures) -> dict[str, list[float]]:
    """Size of the soft-target gradient w.r.t. the student's logits, against T.

    For each T: the mean L2 norm over examples of ``d KL(p_T || p_S) / d z_S``
    (which is ``(q - p) / T`` per example), with and without the T² factor of
    ``kd_loss``. Shows why Hinton et al. multiply by T².
    """
    out = {"temperature": [], "without T²": [], "with T²": []}
    n = student_logits.shape[0]
    for t in temperatures:
        z = student_logits.detach().clone().float().requires_grad_(True)
        losses.forward_kl(z, teacher_logits, temperature=t).backward()
        norm = float(z.grad.norm(dim=-1).mean()) * n  # undo the 1/N of the batch mean
        out["temperature"].append(float(t))
        out["without T²"].append(norm)
        out["with T²"].append(norm * t * t)
    return out


def class_bias_effect(logits: torch.Tensor, labels: torch.Tensor, cls: int, bias: float) -> dict:
    """Errors overall and on class ``cls`` after adding ``bias`` to that class's logit."""
    _check(logits, labels)
    if not 0 <= cls < logits.shape[-1]:
        raise ValueError(f"cls must be a class in [0, {logits.shape[-1]}), got {cls}")
    if not math.isfinite(bias):
        raise ValueError(f"bias must be a finite number, got {bias}")
    shifted = logits.clone()
    shifted[:, cls] += bias
    pred = shifted.argmax(-1)
    of_cls = labels == cls
    return {"bias": float(bias), "errors": int((pred != labels).sum()),
            "class_correct": int((pred[of_cls] == cls).sum()), "class_total": int(of_cls.sum())}


def choose_class_bias(logits: torch.Tensor, labels: torch.Tensor, cls: int, candidates) -> float:
    """The bias for class ``cls`` that minimises errors on (validation!) data; ties -> smallest."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates must list at least one bias to try, e.g. [0.0, 1.0, 2.0]")
    scores = [(class_bias_effect(logits, labels, cls, b)["errors"], b) for b in candidates]
    return float(min(scores)[1])


# --------------------------------------------------------------- text models

@torch.no_grad()
def mlm_predictions(model, blocks: torch.Tensor, tokenizer, *, seed: int = 1234, probability: float = 0.15,
                    batch_size: int = 8) -> dict:
    """Mask ``blocks`` ``(N, S)`` the BERT way with a fixed seed and predict the masked tokens.

    Returns flat tensors over the masked positions: ``target`` ids, ``pred`` ids and
    ``nll`` (the cross-entropy of the target, nats); the logits are not kept (memory:
    a batch of 8 blocks of 128 tokens already has 4M of them). All blocks are masked
    at once from the seed, so every model (and every batch size) answers the same questions.
    """
    inputs, labels = text.mask_tokens(blocks, tokenizer, probability, torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    target, pred, nll = [], [], []
    for i in range(0, len(blocks), batch_size):
        x, y = inputs[i:i + batch_size], labels[i:i + batch_size]
        logits = model(input_ids=x.to(dev)).logits.float().cpu()   # (B, S, V)
        picked = y != -100
        target.append(y[picked])
        pred.append(logits[picked].argmax(-1))
        nll.append(F.cross_entropy(logits[picked], y[picked], reduction="none"))
    model.train(was_training)
    return {"target": torch.cat(target), "pred": torch.cat(pred), "nll": torch.cat(nll)}


def mlm_scores(predictions: dict) -> dict:
    """Masked-token accuracy and perplexity ``exp(mean NLL)`` from ``mlm_predictions``."""
    n = len(predictions["target"])
    if n == 0:
        raise ValueError("no masked position to score")
    return {"accuracy": float((predictions["pred"] == predictions["target"]).float().mean()),
            "perplexity": float(torch.exp(predictions["nll"].mean())), "n_masked": n}


@torch.no_grad()
def classifier_logits(model, ids: torch.Tensor, mask: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
    """Class logits ``(N, C)`` of a sequence classifier on padded ``ids`` / ``mask`` ``(N, S)``."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    with config.autocast(dev):  # bf16 where the hardware has it: 2-3x faster on such CPUs
        out = [model(input_ids=ids[i:i + batch_size].to(dev),
                     attention_mask=mask[i:i + batch_size].to(dev)).logits.float().cpu()
               for i in range(0, len(ids), batch_size)]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def latency_ms(model, *inputs, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall milliseconds of one forward pass on ``inputs`` (CPU timing, eval mode)."""
    model.eval()
    for _ in range(warmup):
        model(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(*inputs)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def perplexity(model, blocks: torch.Tensor, *, batch_size: int = 8) -> float:
    """Held-out perplexity ``exp(mean_t -log p(x_{t+1} | x_<=t))`` of a causal LM on blocks ``(N, S)``."""
    return math.exp(float(token_nll(model, blocks, batch_size=batch_size)["nll"].mean()))


@torch.no_grad()
def token_nll(model, blocks: torch.Tensor, *, batch_size: int = 8) -> dict:
    """Per-position next-token loss of a causal LM on blocks ``(N, S)``: flat ``target`` ids
    (``x[:, 1:]``) and ``nll`` in nats, in the same order for every model."""
    if len(blocks) == 0 or blocks.shape[1] < 2:
        raise ValueError(f"no block to score: blocks of shape {tuple(blocks.shape)}")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    per = blocks.shape[1] - 1
    # both outputs allocated once, before the loop: small tensors kept between each batch's large, freed logits
    # pinned glibc's heap, and scoring 200 blocks grew the process by ~450 MB instead of ~60 MB
    target = blocks[:, 1:].reshape(-1).clone()                                        # (N·(S-1),)
    nll = torch.empty(target.shape, dtype=torch.float32)                              # (N·(S-1),)
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size].to(dev)                                          # (B, S)
        logits = model(input_ids=x).logits[:, :-1].float()                            # (B, S-1, V)
        nll[i * per:(i + len(x)) * per] = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(),
                                                          reduction="none").cpu()
    model.train(was_training)
    return {"target": target, "nll": nll}
