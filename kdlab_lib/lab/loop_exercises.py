"""Checkers for the loops the reader writes, one per chapter (re-exported by ``exercises``).

A loop checker runs the reader's function and the library's reference from the same seed, on tiny
float64 models and data of its own, and compares the weights they leave and the loss they return.
When the two differ it replays each classic slip itself (a small variant of the reference, written
out below) and names the one that matches. The born-again and chain checkers need no training: they
hand the reader recording stand-ins for the models and check who was distilled from whom.
Like every checker, these never raise on the reader's code.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core import models, train, train_text
from .verdicts import Verdict, _call, _verdict, checker

WEIGHT_TOL = 1e-8   # largest weight difference that still counts as the same update
LOSS_RTOL = 1e-6    # relative difference of the returned losses that still counts as the same


# ------------------------------------------------------------------ comparing two runs

@dataclass
class _Run:
    """What one call of a loop left behind: the student's weights, what it returned, whether the teacher
    got gradients. ``out`` is a float, or a dict of floats for the triple loss."""
    weights: torch.Tensor
    start: torch.Tensor
    out: float | dict
    teacher_grad: bool

    def matches(self, other: _Run) -> bool:
        if self.weights.shape != other.weights.shape:
            return False
        same_weights = bool((self.weights - other.weights).abs().max() <= WEIGHT_TOL)
        if isinstance(other.out, dict):
            return same_weights and all(_same(self.out[k], other.out[k]) for k in other.out)
        return same_weights and _same(self.out, other.out)


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= LOSS_RTOL * max(abs(b), 1e-12)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def _number(x) -> float | None:
    """A Python number or a one-element tensor as a float; None for anything else."""
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.is_floating_point():
        return float(x.detach())
    return None


def _replay(case, fn, read_out) -> _Run | Verdict:
    """Build a fresh ``case()`` = ``(student, teacher, args)``, reseed, call ``fn(student, teacher, *args)``
    and read what it returned with ``read_out`` (a value, or a "Not yet" verdict); the caller's random
    state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        student, teacher, args = case()
        start = _flat(student)
        torch.manual_seed(0)   # the same dropout draws for every run
        got, err = _call(fn, student, teacher, *args)
    if err:
        return _verdict(False, err)
    out = read_out(got)
    if isinstance(out, Verdict):
        return out
    teacher_grad = any(p.grad is not None for p in teacher.parameters())
    return _Run(_flat(student), start, out, teacher_grad)


def _judge(mine: _Run, want: _Run, replay_slip, slips: dict, right: str, hint: str) -> Verdict:
    """Right when ``mine`` matches ``want`` (and the teacher stayed without gradients); else the first
    slip in ``slips`` ``{name: message}`` whose replay matches, else what differs and ``hint``."""
    if mine.matches(want):
        if mine.teacher_grad:
            return _verdict(False, TEACHER_GRAD, slip="teacher-with-grad")
        return _verdict(True, right)
    for slip, message in slips.items():
        replayed = replay_slip(slip)
        if isinstance(replayed, _Run) and mine.matches(replayed):
            return _verdict(False, message, slip=slip)
    if mine.weights.shape == mine.start.shape and torch.equal(mine.weights, mine.start):
        return _verdict(False, "the student's weights did not change: after loss.backward(), call "
                               "optimizer.step() to apply the update.", slip="no-step")
    return _verdict(False, _difference(mine, want) + " " + hint)


def _difference(mine: _Run, want: _Run) -> str:
    if isinstance(want.out, dict):
        got = ", ".join(f"{k} {mine.out[k]:.6g} (library {want.out[k]:.6g})" for k in want.out)
        said = f"your terms: {got}"
    else:
        said = f"you returned {mine.out:.6g}, the library {want.out:.6g}"
    if mine.weights.shape != want.weights.shape:
        return said + "; the student's parameters changed shape."
    gap = float((mine.weights - want.weights).abs().max())
    return said + (f"; the student's weights differ by up to {gap:.2g}." if gap > WEIGHT_TOL else
                   "; the weights match, so the update is right but the value returned is not.")


TEACHER_GRAD = ("the numbers are right, but the teacher's forward pass ran with gradients on (its parameters "
                "now hold .grad): run it under torch.no_grad(), or autograd stores the teacher's activations "
                "and computes gradients nobody uses, costing memory and time.")
TEACHER_TRAIN = ("the teacher ran in train mode, so dropout kept changing its targets: call teacher.eval() "
                 "first, so the student learns the teacher's real predictions.")


# ------------------------------------------------------------------ the slips, replayed

def _kd_loss_with(slip: str | None, s_logits, t_logits, y, T: float, alpha: float) -> torch.Tensor:
    """``alpha · CE(z_S, y) + (1 - alpha) · T² · KL(p_T || p_S)``, mean over the rows ``(N, C)``,
    with one classic slip in it (None: none)."""
    dim = 0 if slip == "softmax-over-batch" else -1
    log_s, log_t = F.log_softmax(s_logits / T, dim), F.log_softmax(t_logits / T, dim)   # (N, C)
    first, second = (log_s, log_t) if slip == "reversed-kl" else (log_t, log_s)
    kl = (first.exp() * (first - second)).sum(-1).mean()                                # KL(first || second)
    if slip == "mean-over-vocab":
        kl = kl / s_logits.shape[-1]
    soft = kl if slip == "missing-T2" else T * T * kl
    a = 1 - alpha if slip == "alpha-swapped" else alpha
    return a * F.cross_entropy(s_logits, y) + (1 - a) * soft


def _distill_epoch_with(slip: str):
    """``core.train.distill_epoch`` with one classic slip in it."""
    def epoch(student, teacher, loader, optimizer, T, alpha):
        student.train()
        teacher.train(slip == "teacher-train-mode")
        batch_losses, sizes = [], []
        for x, y in loader:
            with torch.no_grad():
                t_logits = teacher(x)                                                   # (B, C)
            loss = _kd_loss_with(slip, student(x), t_logits, y, T, alpha)
            if slip != "no-zero-grad":
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batch_losses.append(loss.item())
            sizes.append(len(y))
        if slip == "batch-mean":
            return sum(batch_losses) / len(batch_losses)
        return sum(b * n for b, n in zip(batch_losses, sizes)) / sum(sizes)
    return epoch


# ------------------------------------------------------------------ chapter 01: one epoch

EPOCH_SLIPS = {
    "teacher-train-mode": TEACHER_TRAIN,
    "no-zero-grad": "the gradients were never zeroed, so each step applied the sum of every batch's gradient so "
                    "far: call optimizer.zero_grad() before loss.backward() in every batch.",
    "missing-T2": "the soft term lacks its T² factor: its gradients shrink like 1/T², so at T = 4 the teacher "
                  "counts 16 times less than Hinton's loss intends.",
    "reversed-kl": "the KL is the wrong way round: Hinton's soft term is KL(p_T || p_S), teacher first; "
                   "F.kl_div(input, target) takes the student's log-probabilities as input, the teacher's "
                   "probabilities as target.",
    "softmax-over-batch": "the softmax ran over the batch (dim=0), so each class column summed to 1 instead of "
                          "each example's row: use dim=-1, the classes.",
    "alpha-swapped": "alpha is on the wrong term: the lab's loss is alpha · CE(labels) + (1 - alpha) · soft "
                     "term, so with alpha = 0.3 the teacher should get 70% of the weight.",
    "batch-mean": "the update is right, but you returned the mean of the batch losses, and the last batch is "
                  "shorter: weight each batch by its size (total += loss.item() * len(y); return total / count).",
}


def _epoch_case():
    """Float64 MLPs (the teacher with dropout, in train mode, gradients on) and 106 examples in batches of
    32, 32, 32, 10, with ``torch.optim.SGD(lr=0.1)``, T = 4 and alpha = 0.3."""
    torch.manual_seed(18)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4)).double()
    student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    with torch.no_grad():
        teacher[-1].weight.mul_(4.0)                                    # a confident teacher
    x = torch.randn(106, 6, dtype=torch.float64)                        # (N, 6)
    y = torch.randint(0, 4, (106,))                                     # (N,)
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 106, 32)]
    return student, teacher.train(), (loader, torch.optim.SGD(student.parameters(), lr=0.1), 4.0, 0.3)


def _epoch_out(got) -> float | Verdict:
    if got is None:
        return _verdict(False, "your function returned None: write the loop (teacher logits under torch.no_grad(), "
                               "the loss, zero_grad / backward / step per batch) and return the epoch's mean loss.")
    if isinstance(got, torch.Tensor) and got.requires_grad:
        return _verdict(False, "you returned a tensor that still carries its autograd graph: summing losses as "
                               "tensors keeps every batch's graph alive for the whole epoch; add loss.item() "
                               "instead.", slip="kept-graph")
    value = _number(got)
    if value is None:
        return _verdict(False, f"return the epoch's mean loss as a float, not a {type(got).__name__}.")
    return value


@checker("distill_epoch")
def check_distill_epoch(fn) -> Verdict:
    """``fn(student, teacher, loader, optimizer, T, alpha)`` should be one epoch of Hinton's distillation,
    as ``core.train.distill_epoch``: for each batch ``(x, y)``::

        z_T = teacher(x)            eval mode, under torch.no_grad()
        loss = alpha · CE(z_S, y) + (1 - alpha) · T² · KL(softmax(z_T / T) || softmax(z_S / T))
        zero_grad, backward, step

    returning the example-weighted mean loss. Checked from the same seed as the library's loop: the
    student's weights to 1e-8, the loss to 1e-6 (relative)."""
    mine = _replay(_epoch_case, fn, _epoch_out)
    if isinstance(mine, Verdict):
        return mine
    want = _replay(_epoch_case, train.distill_epoch, _epoch_out)
    return _judge(mine, want, lambda slip: _replay(_epoch_case, _distill_epoch_with(slip), _epoch_out),
                  EPOCH_SLIPS, "your epoch matches core.train.distill_epoch: same weights, same loss.",
                  "Recipe per batch: z_T under no_grad, loss = alpha·CE + (1 - alpha)·T²·KL(p_T || p_S), "
                  "zero_grad, backward, step; return the example-weighted mean.")


# ------------------------------------------------------------------ chapter 03: one token-level step

def _token_step_with(slip: str):
    """``core.train_text.token_kd_step`` (forward KL, no clipping) with one classic slip in it."""
    def step(student, teacher, input_ids, attention_mask, optimizer, T, alpha):
        student.train()
        teacher.train(slip == "teacher-train-mode")
        with torch.no_grad():
            t_logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits   # (B, S, V)
        s_logits = student(input_ids=input_ids, attention_mask=attention_mask).logits       # (B, S, V)
        if slip == "not-shifted":   # position t scored against token t itself
            s, t, y, counted = s_logits, t_logits, input_ids, attention_mask
        else:                       # position t predicts token t+1
            s, t, y = s_logits[:, :-1], t_logits[:, :-1], input_ids[:, 1:]
            counted = attention_mask[:, :-1] if slip == "mask-not-shifted" else attention_mask[:, 1:]
        counted = torch.ones_like(counted) if slip == "padding-counted" else counted
        m = counted.bool()                                                                   # (B, S-1)
        loss = _kd_loss_with(slip, s[m], t[m], y[m], T, alpha)                               # rows (N, V)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


TOKEN_SLIPS = {
    "teacher-train-mode": TEACHER_TRAIN,
    "padding-counted": "the padded positions were counted: average only where the next token is real "
                       "(attention_mask[:, 1:]), or the student learns to predict padding.",
    "mask-not-shifted": "position t predicts token t+1, so it counts where token t+1 is real: use "
                        "attention_mask[:, 1:]; attention_mask[:, :-1] also trains the last real token to "
                        "predict padding.",
    "not-shifted": "the logits were not shifted against the targets: position t predicts token t+1, so compare "
                   "logits[:, :-1] with input_ids[:, 1:]; unshifted, the model only learns to copy its input.",
    "mean-over-vocab": "the KL was averaged over the vocabulary too (F.kl_div's reduction='mean'), which divides "
                       "the soft term by V: sum over the vocabulary, then average over the counted positions.",
    "missing-T2": "the soft term lacks its T² factor: its gradients shrink like 1/T² as T grows.",
    "reversed-kl": "that is the reverse KL, KL(p_S || p_T): the lab's token-level KD is the forward "
                   "KL(p_T || p_S), the teacher's probabilities weighting the log-ratio.",
}


def _tiny_gpt2(init: float, dropout: float):
    import transformers
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                  resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                  initializer_range=init, bos_token_id=0, eos_token_id=0)
    return models.settle(transformers.GPT2LMHeadModel(cfg)).double()


def _token_case():
    """Two tiny float64 GPT-2s (the teacher with dropout, in train mode, gradients on), 4 right-padded
    blocks of 10 tokens, ``SGD(lr=0.1)``, T = 2, alpha = 0.5."""
    torch.manual_seed(3)
    teacher, student = _tiny_gpt2(init=0.3, dropout=0.1).train(), _tiny_gpt2(init=0.1, dropout=0.0)
    ids = torch.randint(1, 50, (4, 10))                                                # (B, S)
    mask = (torch.arange(10) < torch.tensor([[10], [7], [5], [10]])).long()            # (B, S), right-padded
    ids = ids * mask                                                                   # padding: token 0
    return student, teacher, (ids, mask, torch.optim.SGD(student.parameters(), lr=0.1), 2.0, 0.5)


def _step_out(got) -> float | Verdict:
    if got is None:
        return _verdict(False, "your function returned None: write the step (teacher logits under torch.no_grad(), "
                               "the loss over the positions that count, zero_grad / backward / step) and return "
                               "the loss as a float.")
    value = _number(got)
    if value is None:
        return _verdict(False, f"return the loss as a float (loss.item()), not a {type(got).__name__}.")
    return value


@checker("token_kd_step")
def check_token_kd_step(fn) -> Verdict:
    """``fn(student, teacher, input_ids, attention_mask, optimizer, T, alpha)`` should be one step of
    token-level distillation, as ``core.train_text.token_kd_step``: position t predicts token t+1 and
    counts where that token is real (``attention_mask[:, 1:]``)::

        z_T = teacher(x)            eval mode, under torch.no_grad()
        loss = alpha · CE(z_S[:, :-1], x[:, 1:]) + (1 - alpha) · T² · KL(p_T || p_S)   mean over counted positions
        zero_grad, backward, step

    returning the loss. Checked on tiny float64 GPT-2s: weights to 1e-8, loss to 1e-6 (relative)."""
    mine = _replay(_token_case, fn, _step_out)
    if isinstance(mine, Verdict):
        return mine
    want = _replay(_token_case, train_text.token_kd_step, _step_out)
    return _judge(mine, want, lambda slip: _replay(_token_case, _token_step_with(slip), _step_out),
                  TOKEN_SLIPS, "your step matches core.train_text.token_kd_step: same weights, same loss.",
                  "Recipe: drop the last position (logits[:, :-1]), targets input_ids[:, 1:], count positions "
                  "where attention_mask[:, 1:] is 1; alpha·CE + (1 - alpha)·T²·KL(p_T || p_S) over them.")


# ------------------------------------------------------------------ chapter 02: one triple-loss step

TERMS = ("soft", "mlm", "cos", "loss")


def _triple_step_with(slip: str):
    """``core.train_text.triple_loss_step`` (no clipping) with one classic slip in it."""
    def step(student, teacher, batch, optimizer, T, weights):
        w_soft, w_mlm, w_cos = weights
        student.train()
        teacher.train(slip == "teacher-train-mode")
        x, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]          # (B, S) each
        with torch.no_grad():
            t = teacher(input_ids=x, attention_mask=mask, output_hidden_states=True)
        s = student(input_ids=x, attention_mask=mask, output_hidden_states=True)
        real, everywhere, masked = mask.bool(), torch.ones_like(mask).bool(), labels != -100   # (B, S)
        soft_at = {"soft-over-padding": everywhere, "soft-only-masked": masked}.get(slip, real)
        cos_at = everywhere if slip == "cos-over-padding" else real
        log_s, log_t = F.log_softmax(s.logits / T, -1), F.log_softmax(t.logits / T, -1)        # (B, S, V)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)[soft_at].mean()
        mlm_logits = s.logits / T if slip == "T-on-mlm" else s.logits
        cos = F.cosine_similarity(s.hidden_states[-1], t.hidden_states[-1], dim=-1)             # (B, S)
        terms = {"soft": kl if slip == "missing-T2" else T * T * kl,
                 "mlm": F.cross_entropy(mlm_logits.flatten(0, 1), labels.flatten()),             # -100 ignored
                 "cos": (1 - cos)[cos_at].mean()}
        terms["loss"] = w_soft * terms["soft"] + w_mlm * terms["mlm"] + w_cos * terms["cos"]
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        return {k: v.item() for k, v in terms.items()}
    return step


TRIPLE_SLIPS = {
    "teacher-train-mode": TEACHER_TRAIN,
    "soft-over-padding": "the soft term counted the padded positions: average the KL over the real tokens "
                         "(attention_mask), or the student copies the teacher's guesses about padding.",
    "soft-only-masked": "the soft term was averaged over the masked tokens only; the lab (DistilBERT's default) "
                        "matches the teacher at every real token, masked or not, which gives about 7 times more "
                        "soft targets per batch at BERT's 15% masking.",
    "cos-over-padding": "the cosine term counted the padded positions: average 1 - cos over the real tokens "
                        "only (attention_mask).",
    "T-on-mlm": "the MLM term was computed at temperature T: it is the plain masked-LM cross-entropy on the "
                "true tokens, at T = 1; only the soft term is softened.",
    "missing-T2": "the soft term lacks its T² factor: its gradients shrink like 1/T², so at T = 2 the teacher "
                  "counts 4 times less than the weights say.",
}


def _triple_case():
    """A tiny float64 BERT teacher (dropout, train mode, gradients on) and its DistilBERT student (every
    other layer, no dropout), 4 right-padded blocks of 10 tokens with about a quarter of the real ones
    masked, ``SGD(lr=0.1)``, T = 2, weights (5, 2, 1)."""
    torch.manual_seed(2)
    teacher = models.bert_mlm(50, layers=2, hidden=16, heads=2, intermediate=32, max_len=16, dropout=0.1)
    with torch.no_grad():   # larger weights than BERT's N(0, 0.02²): a confident teacher whose layers matter
        teacher.bert.embeddings.word_embeddings.weight.mul_(25.0)                  # tied to the output layer
        for layer in teacher.bert.encoder.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(10.0)
    student = models.student_from_teacher(teacher, [1])
    for m in student.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    ids = torch.randint(5, 50, (4, 10))                                               # (B, S)
    mask = (torch.arange(10) < torch.tensor([[10], [8], [6], [10]])).long()           # (B, S), right-padded
    picked = (torch.rand(4, 10) < 0.25) & mask.bool()
    picked[:, 1] = True                                                                # every row has one
    labels = torch.where(picked, ids, torch.full_like(ids, -100))                      # (B, S)
    batch = {"input_ids": torch.where(picked, 4, ids) * mask, "attention_mask": mask, "labels": labels}
    student = student.double()
    return student, teacher.double().train(), (batch, torch.optim.SGD(student.parameters(), lr=0.1), 2.0,
                                               (5.0, 2.0, 1.0))


def _terms_out(got) -> dict | Verdict:
    if got is None:
        return _verdict(False, "your function returned None: compute the three terms, take one step on their "
                               "weighted sum, and return {'soft': ..., 'mlm': ..., 'cos': ..., 'loss': ...}.")
    if not isinstance(got, dict) or not set(TERMS) <= set(got):
        have = sorted(got) if isinstance(got, dict) else type(got).__name__
        return _verdict(False, f"return a dict with the keys {list(TERMS)} (the three terms and the weighted "
                               f"total), got {have}.")
    values = {k: _number(got[k]) for k in TERMS}
    if any(v is None for v in values.values()):
        return _verdict(False, "each value of the dict should be a number (term.item()).")
    return values


@checker("triple_loss_step")
def check_triple_loss_step(fn) -> Verdict:
    """``fn(student, teacher, batch, optimizer, T, weights)`` should be one step of DistilBERT's triple loss,
    as ``core.train_text.triple_loss_step``, on ``batch`` = ``{input_ids, attention_mask, labels}`` (labels
    -100 where the input was not masked) with ``weights`` = ``(w_soft, w_mlm, w_cos)``::

        soft = T² · KL(p_T || p_S)      mean over the real tokens, teacher in eval mode under no_grad
        mlm  = CE(z_S, labels)          mean over the masked tokens, at T = 1
        cos  = 1 - cos(h_S, h_T)        last hidden states, mean over the real tokens
        loss = w_soft · soft + w_mlm · mlm + w_cos · cos;  zero_grad, backward, step

    returning ``{"soft", "mlm", "cos", "loss"}``. Checked on a tiny float64 BERT and its DistilBERT
    student: weights to 1e-8, each term to 1e-6 (relative)."""
    mine = _replay(_triple_case, fn, _terms_out)
    if isinstance(mine, Verdict):
        return mine
    want = _replay(_triple_case, train_text.triple_loss_step, _terms_out)
    return _judge(mine, want, lambda slip: _replay(_triple_case, _triple_step_with(slip), _terms_out),
                  TRIPLE_SLIPS, "your step matches core.train_text.triple_loss_step: same weights, same terms.",
                  "Recipe: pass output_hidden_states=True and take hidden_states[-1]; soft and cos over "
                  "attention_mask, MLM with cross_entropy(..., labels) (it skips -100).")


# ------------------------------------------------------------------ chapters 04 and 05: who learns from whom

class _Model:
    """A stand-in for a model: the born-again and chain checkers only need to know who trained it."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _recorders(*kinds: str):
    """``(makers, made, calls, distill)``: one ``make_<kind>()`` per kind that returns a fresh ``_Model``
    named ``"<kind> 1"``, ``"<kind> 2"``...; every model made, in order; and ``distill(student, teacher)``,
    which records the pair in ``calls`` and returns the student."""
    made, calls = [], []

    def maker(kind):
        def make():
            made.append(_Model(f"{kind} {sum(m.name.startswith(kind) for m in made) + 1}"))
            return made[-1]
        return make

    def distill(student, teacher):
        calls.append((student, teacher))
        return student
    return [maker(k) for k in kinds], made, calls, distill


def _swapped(calls, teacher) -> bool:
    return any(s is teacher for s, _ in calls)


SWAPPED = ("distill(student, teacher) takes the student first: you passed the teacher as the model to train.")


def _born_again_verdict(fn, generations: int) -> Verdict | None:
    """None when ``fn`` runs ``generations`` born-again generations right; else what went wrong."""
    teacher = _Model("the teacher")
    (make_student,), made, calls, distill = _recorders("student")
    got, err = _call(fn, teacher, make_student, distill, generations)
    if err:
        return _verdict(False, err)
    if got is None and not calls:
        return _verdict(False, "your function returned None: make a fresh student per generation, distill it from "
                               "the previous generation (the first from the teacher), and return the students.")
    if not calls:
        return _verdict(False, "distill was never called: train each new student with distill(student, teacher).",
                        slip="never-trained")
    if _swapped(calls, teacher):
        return _verdict(False, SWAPPED, slip="arguments-swapped")
    trained = [s for s, _ in calls]
    if len(set(map(id, trained))) < len(trained):
        return _verdict(False, "one student was trained again and again: call make_student() in every generation, "
                               "so each starts from fresh random weights (Furlanello et al.'s born-again networks "
                               "share only the architecture).", slip="student-reused")
    if len(calls) != generations:
        return _verdict(False, f"asked for {generations} generations, you trained {len(calls)} students: one "
                               f"generation = one fresh student distilled once.", slip="wrong-generations")
    if generations > 1 and all(t is teacher for _, t in calls):
        return _verdict(False, "every generation learned from the first teacher: generation k should learn from "
                               "generation k-1, so use the student you just trained as the next teacher.",
                        slip="all-from-first-teacher")
    want = [(s, t) for s, t in zip(trained, [teacher, *trained[:-1]])]
    if calls != want:
        return _verdict(False, "the generations were chained wrongly: you ran " + _pairs(calls) +
                               "; expected " + _pairs(want) + ".")
    if not isinstance(got, (list, tuple)) or list(got) != trained:
        return _verdict(False, f"return the students in the order they were trained, {trained}; you returned "
                               f"{got!r}.", slip="wrong-return")
    return None


def _pairs(calls) -> str:
    return ", ".join(f"distill({s}, {t})" for s, t in calls)


@checker("born_again")
def check_born_again(fn) -> Verdict:
    """``fn(teacher, make_student, distill, generations)`` should train ``generations`` born-again
    generations (Furlanello et al. 2018) and return them in order::

        teacher_k = teacher
        for k in 1..generations:   student_k = make_student();  distill(student_k, teacher_k);  teacher_k = student_k

    The checker passes stand-ins that only record the calls (its ``distill`` returns the student it was
    given), with 3 generations and then 2."""
    for generations in (3, 2):
        wrong = _born_again_verdict(fn, generations)
        if wrong is not None:
            return wrong
    return _verdict(True, "each generation is a fresh student distilled from the one before it, the first "
                          "from the teacher.")


@checker("chain")
def check_chain(fn) -> Verdict:
    """``fn(teacher, make_assistant, make_student, distill)`` should be a teacher-assistant chain
    (Mirzadeh et al. 2020) and return ``(assistant, student)``::

        assistant = make_assistant();  distill(assistant, teacher)
        student = make_student();      distill(student, assistant)

    The checker passes stand-ins that only record the calls (its ``distill`` returns the student)."""
    teacher = _Model("the teacher")
    (make_assistant, make_student), made, calls, distill = _recorders("assistant", "student")
    got, err = _call(fn, teacher, make_assistant, make_student, distill)
    if err:
        return _verdict(False, err)
    if got is None and not calls:
        return _verdict(False, "your function returned None: distill the assistant from the teacher, then the "
                               "student from the assistant, and return (assistant, student).")
    if _swapped(calls, teacher):
        return _verdict(False, SWAPPED, slip="arguments-swapped")
    students = [s for s, _ in calls if s.name.startswith("student")]
    if not students:
        return _verdict(False, "the student was never distilled: call distill(student, assistant).",
                        slip="student-untrained")
    step = next(i for i, (s, _) in enumerate(calls) if s is students[0])
    its_teacher = calls[step][1]
    if its_teacher is teacher:
        return _verdict(False, "the student learned from the teacher directly: in a chain it learns from the "
                               "assistant, whose smaller gap it can follow.", slip="student-from-teacher")
    assistant_lessons = [i for i, (s, _) in enumerate(calls) if s is its_teacher]
    if not assistant_lessons:
        return _verdict(False, "the student learned from an assistant that was never trained: first "
                               "distill(assistant, teacher), then distill(student, assistant).",
                        slip="assistant-untrained")
    if min(assistant_lessons) > step:
        return _verdict(False, "the student was distilled before the assistant was trained, so it learned from "
                               "an untrained model: train the assistant first.", slip="student-before-assistant")
    want = [(its_teacher, teacher), (students[0], its_teacher)]
    if calls != want:
        return _verdict(False, "you ran " + _pairs(calls) + "; a two-step chain is " + _pairs(want) + ".")
    if not isinstance(got, (list, tuple)) or list(got) != [its_teacher, students[0]]:
        return _verdict(False, f"return (assistant, student), here ({its_teacher}, {students[0]}); you returned "
                               f"{got!r}.", slip="wrong-return")
    return _verdict(True, "the assistant learns from the teacher, then the student from the assistant.")
