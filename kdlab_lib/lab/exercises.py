"""Checkers for the notebooks' exercises.

A checker never raises on a wrong answer: it returns a ``Verdict`` that is
truthy when the answer is right and shows as "✅ ..." or "Not yet: <hint>" in
the notebook, so a notebook runs top to bottom with the placeholder answers it
ships with. The checkers of the loops the reader writes live in ``loop_exercises``, those of the book's
exercises (experiments the reader runs) in ``book_exercises``; both are re-exported here, so every checker
is ``exercises.check_...``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import losses, metrics
from .book_exercises import (  # noqa: F401  (the book's exercises, run by the reader)
    check_alternatives,
    check_generations,
    check_staging,
    check_temperature_sweep,
    check_written,
)
from .loop_exercises import (  # noqa: F401  (the loop exercises, one per chapter)
    check_born_again,
    check_chain,
    check_distill_epoch,
    check_token_kd_step,
    check_triple_loss_step,
)
from .verdicts import GRADE_LOG, Verdict, _call, _verdict, checker  # noqa: F401  (GRADE_LOG, Verdict: re-exported)


def _cases():
    g = torch.Generator().manual_seed(1234)
    return [(torch.randn(4, 10, generator=g) * 3, torch.randn(4, 10, generator=g) * 3, t)
            for t in (1.0, 2.0, 4.0, 10.0)]


def _close(a, b) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5)


@checker("soften")
def check_soften(fn) -> Verdict:
    """``fn(logits, T)`` should equal ``softmax(logits / T)`` along the last dimension."""
    for logits, _, t in _cases():
        got, err = _call(fn, logits, t)
        if err:
            return _verdict(False, err)
        if got is None:
            return _verdict(False, "your function returned None: replace the placeholder with "
                                   "softmax(logits / T) along the last dimension.")
        want = losses.soften(logits, t)
        if _close(got, want):
            continue
        if _close(got, torch.softmax(logits, -1)):
            return _verdict(False, "at T = 1 you are right, but the temperature is ignored: divide "
                                   "the logits by T before the softmax.", slip="no-temperature")
        if _close(got, torch.softmax(logits * t, -1)):
            return _verdict(False, "you multiplied by T: divide the logits by T, so a larger T "
                                   "gives a flatter distribution.", slip="times-T")
        if _close(got, torch.softmax(logits / t, 0)):
            return _verdict(False, "softmax over the wrong dimension: use dim=-1 (the classes).", slip="wrong-dim")
        return _verdict(False, f"at T = {t:g} your probabilities differ from softmax(logits / T); "
                               f"check that each row sums to 1.")
    return _verdict(True, "soften matches the library: softmax(z / T) over the classes.")


@checker("kd_loss")
def check_kd_loss(fn) -> Verdict:
    """``fn(student_logits, teacher_logits, T)`` should equal ``T² · KL(p_T || p_S)``, batch mean."""
    for s, t_logits, t in _cases():
        got, err = _call(fn, s, t_logits, t)
        if err:
            return _verdict(False, err)
        if got is None:
            return _verdict(False, "your function returned None: replace the placeholder with "
                                   "T² · KL(p_T || p_S), averaged over the batch.")
        want = losses.kd_loss(s, t_logits, t)
        if _close(torch.as_tensor(got), want):
            continue
        got = torch.as_tensor(got).float()
        kl = losses.forward_kl(s, t_logits, temperature=t)
        if t != 1.0 and torch.allclose(got, kl, atol=1e-5):
            return _verdict(False, "missing the T² factor: the gradient of the KL term shrinks like "
                                   "1/T², so multiply by T² to keep it comparable to the hard loss.", slip="missing-T2")
        if torch.allclose(got, t * t * losses.reverse_kl(s, t_logits, temperature=t), atol=1e-5):
            return _verdict(False, "KL the wrong way round: Hinton's loss is KL(p_T || p_S), the "
                                   "teacher's distribution first (F.kl_div(log p_S, p_T)).", slip="reversed-kl")
        if torch.allclose(got, want * len(s), atol=1e-4):
            return _verdict(False, "summed over the batch: average over the examples instead.", slip="summed")
        if torch.allclose(got, want / s.shape[-1], atol=1e-5):
            return _verdict(False, "F.kl_div's default reduction='mean' also divides by the number "
                                   "of classes: use reduction='batchmean'.", slip="reduction-mean")
        if torch.allclose(got, t * t * losses.forward_kl(s, t_logits), atol=1e-5):
            return _verdict(False, "the logits are not softened: divide both by T before the softmax.",
                            slip="not-softened")
        return _verdict(False, f"at T = {t:g} you got {float(got):.4f}, the library gives "
                               f"{float(want):.4f}. Recipe: p_T = softmax(z_T / T), "
                               f"log p_S = log_softmax(z_S / T), loss = T² · mean_x sum_c p_T (log p_T - log p_S).")
    return _verdict(True, "kd_loss matches the library: T² · KL(p_T || p_S), averaged over the batch.")


GRADIENT_TEMPERATURES = (1.0, 2.0, 4.0, 10.0, 20.0)   # the book's exercise 3 temperatures


def gradient_logits(vocab: int = 4096, scale: float = 3.0) -> tuple:
    """A fixed pair of logits ``(student, teacher)``, each ``(1, vocab)`` float64: one position over chapter 03's
    vocabulary, for the gradient exercise (the checker uses the same pair)."""
    g = torch.Generator().manual_seed(3)
    return (torch.randn(1, vocab, generator=g, dtype=torch.float64) * scale,
            torch.randn(1, vocab, generator=g, dtype=torch.float64) * scale)


def kl_gradient(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """The closed form of d KL(p_T || q_T) / d z_S at one position, with q_T = softmax(z_S / T)
    and p_T = softmax(z_T / T): ``(q_T - p_T) / T`` per logit."""
    q, p = losses.soften(student_logits, temperature), losses.soften(teacher_logits, temperature)
    return (q - p) / temperature


@checker("kl_gradient")
def check_kl_gradient(fn) -> Verdict:
    """``fn(student_logits, teacher_logits, T)`` should return, by autograd, the gradient of
    ``losses.forward_kl(student_logits, teacher_logits, temperature=T)`` with respect to ``student_logits``
    (one position, shape ``(1, V)``); it equals ``(q_T - p_T) / T``."""
    g = torch.Generator().manual_seed(11)
    for t in (1.0, 4.0, 20.0):
        s, te = (torch.randn(1, 50, generator=g, dtype=torch.float64) * 3 for _ in range(2))
        got, err = _call(fn, s.clone(), te.clone(), t)
        if err:
            return _verdict(False, err)
        want = kl_gradient(s, te, t)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            return _verdict(False, f"return the gradient, a tensor shaped like the student's logits {tuple(s.shape)}: "
                                   "x = logits.clone().requires_grad_(); loss.backward(); x.grad.")
        mine = got.double()
        close = lambda x, mine=mine: torch.allclose(mine, x, rtol=1e-6, atol=1e-9)
        if close(want):
            continue
        q, p = losses.soften(s, t), losses.soften(te, t)
        slips = {"missing-1/T": (q - p, "your gradient is (q - p), T times too big: differentiate forward_kl at "
                                        "temperature T itself (the 1/T comes from z / T)."),
                 "T2-scaled": (t * (q - p), "yours is T² times the gradient: that is kd_loss's (T² · KL), not "
                                            "forward_kl's."),
                 "reversed": ((p - q) / t, "your sign is flipped: the gradient is (q - p) / T, so a step against it "
                                           "moves the student towards the teacher."),
                 "untempered": (torch.softmax(s, -1) - torch.softmax(te, -1), "the temperature is ignored: pass "
                                "temperature=T to forward_kl.")}
        for slip, (x, hint) in slips.items():
            if close(x):
                return _verdict(False, f"at T = {t:g} " + hint, slip=slip)
        if not got.abs().sum():
            return _verdict(False, "your gradient is all zeros: compute forward_kl on logits that require grad and "
                                   "call backward() (or torch.autograd.grad).")
        return _verdict(False, f"at T = {t:g} your gradient differs from autograd's on forward_kl (largest gap "
                               f"{float((got.double() - want).abs().max()):.3g}).")
    return _verdict(True, "autograd agrees with the closed form: d KL(p_T || q_T) / d z_S = (q_T - p_T) / T.")


def gradient_power(norms: dict) -> float:
    """The slope of log |gradient| against log T between the two hottest temperatures of ``norms``."""
    (t1, n1), (t2, n2) = sorted(norms.items())[-2:]
    return float((torch.log(torch.tensor(n2 / n1)) / torch.log(torch.tensor(t2 / t1))).item())


@checker("gradient_power")
def check_gradient_power(norms, my_power) -> Verdict:
    """``norms`` ``{T: |gradient|}`` the reader measured on ``gradient_logits()`` at ``GRADIENT_TEMPERATURES``
    (without T²); ``my_power`` the k in |gradient| ∝ T^k at high T, read off the reader's log-log plot. The
    checker recomputes each norm with the closed form and the slope between the two hottest T."""
    s, t = gradient_logits()
    want = {T: float(kl_gradient(s, t, T).norm()) for T in GRADIENT_TEMPERATURES}
    try:
        mine = {float(T): float(n) for T, n in norms.items()}
    except (AttributeError, TypeError, ValueError):
        return _verdict(False, "norms should be a dict {T: the norm of your gradient at T}.")
    if sorted(mine) != sorted(want):
        return _verdict(False, f"measure the norm at each T of {list(GRADIENT_TEMPERATURES)}, on gradient_logits().")
    off = [T for T in want if abs(mine[T] - want[T]) > 1e-6 * want[T]]
    if off:
        T = off[0]
        slip = "T2-scaled" if abs(mine[T] - T * T * want[T]) <= 1e-6 * T * T * want[T] else None
        return _verdict(False, f"at T = {T:g} your norm is {mine[T]:.4g}, the gradient's is {want[T]:.4g}"
                               + (": you measured T² times it; measure the gradient itself, then multiply by T² "
                                  "for the second line." if slip else "."), slip=slip)
    slope = gradient_power(want)
    if my_power is None:
        return _verdict(False, "now set my_power: at high T, |gradient| grows like T to what power? Read the "
                               "slope of your log-log plot.")
    try:
        power = float(my_power)
    except (TypeError, ValueError):
        return _verdict(False, f"my_power should be a number, got {my_power!r}")
    if abs(power - slope) > 0.25:
        return _verdict(False, f"between T = 10 and 20 the slope of log |gradient| on log T is {slope:.2f}, not "
                               f"{power:g}: halving the gradient per doubling of T is a power of -1.")
    return _verdict(True, f"|gradient| ∝ T^{slope:.2f} at high T: (q - p) shrinks like 1/T and the 1/T of z / T "
                          "adds another, so without T² the soft term fades as 1/T². kd_loss's T² cancels both: "
                          "at high T the teacher's pull stops shrinking.")


PREDICTIONS = {
    "high-T": ("c", "As T grows the softened distribution tends to uniform (1/10 each) and its entropy "
                    "to log 10 ≈ 2.30 nats: every class looks equally likely, so the dark knowledge washes out."),
    "no-T2": ("b", "Without T² the soft term's gradient shrinks like 1/T², so at high T the hard-label "
                   "term dominates and the student learns almost nothing from the teacher."),
    "copied-student": ("b", "The copied layers already compute useful features and the copied output head "
                            "reads them, so the untrained student fills in many blanks, but the layers it skips "
                            "leave a gap that distillation must close."),
    "omitted-3": ("b", "The student has never seen a 3, but the teacher's soft targets on other digits "
                       "(3-ish 5s and 8s) taught it what a 3 looks like: it gets many 3s right, fewer than "
                       "the teacher (Hinton et al.'s got 877 of the 1,010 test 3s right), because its 3 "
                       "logit is too low; raising that one bias brings nearly all of them back."),
    "reverse-kl": ("b", "Reverse KL, KL(q || p_T), charges the student for every bit of mass it puts where "
                        "the teacher has little, and nothing for the teacher's mass it leaves out: so it "
                        "settles on one peak (mode-seeking). Forward KL does the opposite and covers both."),
    "born-again": ("b", "Nothing forces a student to copy its teacher: it learns from the teacher's whole "
                        "distribution from a different random start, and disagrees with it on some inputs. "
                        "Those disagreements can fall on the teacher's mistakes or not. Furlanello et al.'s "
                        "first generation beat its teacher, but later ones did not always beat earlier ones "
                        "(their gains 'saturate'): measure it, on more than one seed."),
    "capacity-gap": ("c", "Distillation's gain depends on the pair: a student far too small cannot follow "
                          "the teacher's soft targets (Mirzadeh et al. 2020 saw a small student learn *less* "
                          "from a bigger teacher), and the temperature that helps one width can hurt another. "
                          "Read the gain per width in the measured sweep: where is it largest, and is it "
                          "larger than the seed-to-seed spread?"),
}


@checker(lambda question, *a, **k: f"prediction:{question}")
def check_prediction(question: str, answer) -> Verdict:
    """Predict-then-reveal: compare a letter answer with the key and explain."""
    if question not in PREDICTIONS:
        return _verdict(False, f"unknown question {question!r}; one of {sorted(PREDICTIONS)}")
    key, why = PREDICTIONS[question]
    if answer is None:
        return _verdict(False, "write your prediction (a letter) first, then run the cell to reveal.")
    chosen = str(answer).strip().lower()
    ok = chosen == key
    return _verdict(ok, ("right! " if ok else f"the answer is ({key}). ") + why,
                    slip=None if ok else f"chose-{chosen[:12]}")   # the grade report's most common wrong answer


# ------------------------------------------------------------------ chapter 02

@checker("cosine_hidden_loss")
def check_cosine_hidden_loss(fn) -> Verdict:
    """``fn(student_hidden, teacher_hidden, mask)`` should be the mean over counted positions
    of ``1 - cos(h_S, h_T)``."""
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got, err = _call(fn, s, t, mask)
    if err:
        return _verdict(False, err)
    if got is None:
        return _verdict(False, "your function returned None: replace the placeholder with the mean of "
                               "1 - cos(h_S, h_T) over the positions where mask is True.")
    got = torch.as_tensor(got).float()
    want = losses.cosine_hidden_loss(s, t, mask=mask)
    cos = F.cosine_similarity(s, t, dim=-1)
    if got.shape == want.shape and torch.allclose(got, want, atol=1e-5):
        return _verdict(True, "cosine_hidden_loss matches the library: mean of 1 - cos over counted positions.")
    if torch.allclose(got, cos[mask].mean(), atol=1e-5):
        return _verdict(False, "that is the mean cosine itself: the loss must fall as the directions "
                               "agree, so use 1 - cos.", slip="cosine-not-loss")
    if torch.allclose(got, (1 - cos).mean(), atol=1e-5):
        return _verdict(False, "the padded positions were counted too: average only where mask is True.",
                        slip="padding-counted")
    if torch.allclose(got, (1 + cos[mask]).mean(), atol=1e-5):
        return _verdict(False, "1 + cos is smallest for opposite directions: use 1 - cos.", slip="one-plus-cos")
    if torch.allclose(got, (1 - cos[mask]).sum(), atol=1e-4):
        return _verdict(False, "summed over positions: take the mean instead.", slip="summed")
    return _verdict(False, f"you got {float(got):.4f}, the library gives {float(want):.4f}. "
                           f"Hint: torch.nn.functional.cosine_similarity(h_S, h_T, dim=-1) compares the "
                           f"hidden vectors position by position.")


@checker("layer_choice")
def check_layer_choice(my_scores, my_layers) -> Verdict:
    """Notebook 02's layer exercise, measured by the reader: ``my_scores`` ``{(i, j): held-out masked-token
    accuracy}`` of the 2-layer student copied from teacher layers i < j, untrained, on ``ch02.layer_probe``, for
    every pair; ``my_layers`` the pair the reader picks from them. The checker re-measures every pair."""
    from itertools import combinations

    from ..chapters import ch02_distilbert as ch02
    teacher, tok = ch02.load()
    pairs = list(combinations(range(teacher.config.num_hidden_layers), 2))
    try:
        mine = {tuple(sorted(int(i) for i in k)): float(v) for k, v in my_scores.items()}
    except (AttributeError, TypeError, ValueError):
        return _verdict(False, "my_scores should be a dict {(i, j): accuracy}, one entry per pair of teacher layers.")
    if sorted(mine) != pairs:
        return _verdict(False, f"measure every pair of the teacher's {teacher.config.num_hidden_layers} layers "
                               f"(itertools.combinations(range({teacher.config.num_hidden_layers}), 2): "
                               f"{len(pairs)} pairs); you have {len(mine)}.")
    ours = ch02.layer_pair_scores(teacher, tok, ch02.layer_probe(tok))
    off = [p for p in pairs if abs(mine[p] - ours[p]) > 1e-6]
    if off:
        p = off[0]
        return _verdict(False, f"your accuracy for layers {list(p)}, {mine[p]:.4f}, is not the held-out probe's "
                               f"{ours[p]:.4f}: score the untrained copy with ch02.mlm_score(student.eval(), tok, "
                               f"probe).", slip="other-split")
    if my_layers is None:
        return _verdict(False, "now set my_layers to the pair your measurements favour.")
    try:
        choice = tuple(sorted(int(i) for i in my_layers))
    except (TypeError, ValueError):
        return _verdict(False, f"my_layers should be two layer indices, got {my_layers!r}")
    best = max(pairs, key=ours.get)
    if choice not in ours:
        return _verdict(False, f"pick two distinct layers of 0..{len(pairs) and pairs[-1][1]}, got {list(my_layers)}")
    if ours[choice] < ours[best]:
        return _verdict(False, f"layers {list(choice)} give {ours[choice]:.3f}, but your own table has "
                               f"{list(best)} at {ours[best]:.3f}.", slip="not-the-best")
    ends = "keeps both ends" if choice == (0, pairs[-1][1]) else "does not keep both ends"
    return _verdict(True, f"layers {list(choice)} give {ours[choice]:.3f} before any training, the best of "
                          f"{len(pairs)}; the pair {ends} of the teacher (its first layer reads the embeddings, its "
                          f"last feeds the output head).")


# ------------------------------------------------------------------ chapter 03

@checker("token_kd_loss")
def check_token_kd_loss(fn) -> Verdict:
    """``fn(student_logits, teacher_logits, mask, T)`` on ``(B, S, V)`` logits and a ``(B, S)`` mask
    should be ``T² ·`` the mean over positions where mask is true of ``KL(p_T || p_S)``."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 6, 11, generator=g) * 2, torch.randn(2, 6, 11, generator=g) * 2
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)  # row 0 is padded
    temp = 2.0
    got, err = _call(fn, s, t, mask, temp)
    if err:
        return _verdict(False, err)
    if got is None:
        return _verdict(False, "your function returned None: replace the placeholder with T² times the mean, "
                               "over the positions where mask is True, of KL(p_T || p_S).")
    got = torch.as_tensor(got).float()
    want = losses.kd_loss(s, t, temp, mask=mask)
    if got.shape == want.shape and torch.allclose(got, want, atol=1e-5):
        return _verdict(True, "matches losses.kd_loss with the mask: T²·KL(p_T || p_S), padding ignored.")
    wrong = {   # slip: (hint, what that slip computes)
        "padding-counted": ("the padded positions were counted too: average only over the positions where mask "
                            "is True.", losses.kd_loss(s, t, temp)),
        "reversed-kl": ("that is the reverse KL, KL(p_S || p_T): forward KL weights the log-ratio by the teacher's "
                        "probabilities.", temp * temp * losses.reverse_kl(s, t, temperature=temp, mask=mask)),
        "missing-T2": ("the T² factor is missing: without it the soft gradients shrink like 1/T².",
                       losses.forward_kl(s, t, temperature=temp, mask=mask)),
        "summed": ("summed over positions: take the mean over the counted positions instead.",
                   losses.kd_loss(s, t, temp, mask=mask) * mask.sum()),
    }
    for slip, (hint, value) in wrong.items():
        if got.shape == value.shape and torch.allclose(got, value, atol=1e-4):
            return _verdict(False, hint, slip=slip)
    return _verdict(False, f"you got {float(got) if got.numel() == 1 else tuple(got.shape)}, the library gives "
                           f"{float(want):.4f}. Hint: log_softmax both at temperature T, then sum "
                           f"p_T·(log p_T − log p_S) over the vocabulary at each position.")


@checker("topk_bytes")
def check_topk_bytes(fn) -> Verdict:
    """``fn(vocab_size, k)`` should give the bytes per token of a top-k cache: k fp16 values (2 bytes)
    plus k indices (2 bytes while the vocabulary fits uint16, i.e. V <= 65,536, else 4)."""
    cases = [(4096, 1), (4096, 100), (50_257, 20), (128_256, 100), (65_536, 5), (65_537, 5)]
    for v, k in cases:
        got, err = _call(fn, v, k)
        if err:
            return _verdict(False, err)
        if got is None:
            return _verdict(False, "your function returned None: return k x (bytes per value + bytes per index).")
        want = k * (2 + (2 if v <= 65_536 else 4))
        if got == want:
            continue
        if got == 2 * k:
            return _verdict(False, f"for V = {v:,}, k = {k}: {got} counts the values only; the cache must also "
                                   f"store which token each value belongs to.", slip="values-only")
        if got == 2 * v:
            return _verdict(False, "that is the size of the full fp16 logits, not the top-k cache.", slip="full-logits")
        if got == k * 6 or got == k * 4:
            return _verdict(False, f"for V = {v:,}, k = {k}: {got} bytes. An index fits in 2 bytes (uint16) "
                                   f"only while V <= 65,536; above that it needs 4 (int32).", slip="index-width")
        return _verdict(False, f"for V = {v:,}, k = {k} you gave {got}, the answer is {want}.")
    return _verdict(True, "right: k·(2 + 2) bytes while the vocabulary fits uint16, k·(2 + 4) above it "
                          "(GPT-2's 50,257 still fits; Llama 3's 128,256 does not).")


# ------------------------------------------------------------ chapter 04 (self-distillation)

@checker("ensemble")
def check_ensemble(fn) -> Verdict:
    """``fn(list_of_logits)`` should give the ensemble's probabilities ``(N, C)``: the mean over the
    models of each model's softmax (Furlanello et al.'s BAN ensemble)."""
    g = torch.Generator().manual_seed(4)
    for m in (1, 2, 4):
        logits = [torch.randn(6, 10, generator=g) * 3 for _ in range(m)]
        got, err = _call(fn, [x.clone() for x in logits])
        if err:
            return _verdict(False, err)
        if got is None:
            return _verdict(False, "your function returned None: softmax each model's logits, then "
                                   "average the probabilities over the models.")
        want = torch.stack([x.softmax(-1) for x in logits]).mean(0)
        if _close(got, want):
            continue
        if m > 1 and _close(got, torch.stack(logits).mean(0).softmax(-1)):
            return _verdict(False, "that is the softmax of the mean logits (a geometric-mean ensemble): "
                                   "average the probabilities instead, softmax first, then the mean.",
                            slip="geometric-mean")
        if _close(got, torch.stack(logits).mean(0)):
            return _verdict(False, "you averaged the raw logits: the rows do not sum to 1. Turn each "
                                   "model's logits into probabilities with a softmax first.", slip="averaged-logits")
        if m > 1 and _close(got, torch.stack([x.softmax(-1) for x in logits]).sum(0)):
            return _verdict(False, "you summed the probabilities: divide by the number of models.", slip="summed-probs")
        return _verdict(False, f"with {m} model(s) your ensemble differs from the mean of the softmax "
                               f"outputs; check the shape is (N, C) and each row sums to 1.")
    return _verdict(True, "the ensemble is the mean of the models' probabilities.")


@checker("corrupt_labels")
def check_corrupt_labels(fn) -> Verdict:
    """``fn(labels, share, seed)`` should return new labels in which exactly ``round(share · N)``
    entries, chosen with ``seed``, hold a *different* class in 0..9, and the others are unchanged."""
    labels = torch.arange(2000) % 10
    for share, seed in ((0.3, 0), (0.1, 1), (0.5, 2)):
        original = labels.clone()
        got, err = _call(fn, labels, share, seed)
        if err:
            return _verdict(False, err)
        if got is None:
            return _verdict(False, "your function returned None: return the labels with a share of them "
                                   "replaced by another class.")
        if not torch.equal(labels, original):
            return _verdict(False, "your function changed the labels it was given: work on a copy "
                                   "(labels.clone()).", slip="mutated-input")
        got = torch.as_tensor(got)
        if got.shape != labels.shape:
            return _verdict(False, f"expected {tuple(labels.shape)} labels, got shape {tuple(got.shape)}.")
        if int(got.min()) < 0 or int(got.max()) > 9:
            return _verdict(False, "some labels are outside 0..9.")
        changed, want = int((got != labels).sum()), round(share * len(labels))
        if changed == 0:
            return _verdict(False, "no label changed: pick round(share · N) examples with a seeded "
                                   "torch.randperm and give each a different class.", slip="nothing-flipped")
        if changed < want:
            return _verdict(False, f"share {share}: {changed} labels changed, not {want}. A new class drawn "
                                   f"from all 10 is the old one a tenth of the time: draw an offset in 1..9 "
                                   f"and take (label + offset) % 10.", slip="flipped-to-itself")
        if changed != want:
            return _verdict(False, f"share {share}: {changed} labels changed, expected exactly {want}.",
                            slip="wrong-count")
        again, err = _call(fn, labels, share, seed)
        if err or not torch.equal(torch.as_tensor(again), got):
            return _verdict(False, "the same seed gave different labels: use a torch.Generator seeded "
                                   "with `seed` for every random draw.", slip="not-seeded")
        other, err = _call(fn, labels, share, seed + 10)
        if err or torch.equal(torch.as_tensor(other), got):
            return _verdict(False, "a different seed gave the same labels: the seed must drive the choice.",
                            slip="seed-ignored")
    return _verdict(True, "exactly the chosen share is flipped, each to another class, and the seed "
                          "makes it repeatable.")


# ------------------------------------------------------------------ chapter 05

@checker("magnitude_mask")
def check_magnitude_mask(fn) -> Verdict:
    """``fn(weight, share)`` should return a boolean mask of the weight's shape that is False on
    exactly ``round(share · numel)`` entries, those with the smallest absolute values (magnitude
    pruning, as ``torch.nn.utils.prune.l1_unstructured``), and True elsewhere."""
    g = torch.Generator().manual_seed(5)
    cases = [(torch.randn(8, 12, generator=g), s) for s in (0.0, 0.25, 0.5, 0.9)]
    cases.append((torch.randn(30, generator=g) - 2.0, 0.5))   # mostly negative: sign matters
    for w, share in cases:
        got, err = _call(fn, w.clone(), share)
        if err:
            return _verdict(False, err)
        if got is None:
            return _verdict(False, "your function returned None: return a boolean tensor, True = keep.")
        if not isinstance(got, torch.Tensor) or got.shape != w.shape:
            return _verdict(False, f"return a boolean tensor of the weight's shape {tuple(w.shape)}.")
        keep = got.bool()
        n_pruned = int((~keep).sum())
        want = round(share * w.numel())
        order = w.abs().flatten().argsort()
        want_keep = torch.ones(w.numel(), dtype=torch.bool)
        want_keep[order[:want]] = False
        if torch.equal(keep.flatten(), want_keep):
            continue
        if torch.equal(~keep.flatten(), want_keep):
            return _verdict(False, f"at share {share} you kept {int(keep.sum())} weights and pruned "
                                   f"{n_pruned}: True should mean keep, and `share` is the part to remove.",
                            slip="inverted-mask")
        if n_pruned != want:
            return _verdict(False, f"at share {share} of {w.numel()} weights, prune exactly "
                                   f"round(share · numel) = {want}; you pruned {n_pruned}.", slip="wrong-count")
        signed = torch.ones(w.numel(), dtype=torch.bool)
        signed[w.flatten().argsort()[:want]] = False
        if torch.equal(keep.flatten(), signed):
            return _verdict(False, "you pruned the most negative weights. Magnitude means |w|: a weight "
                                   "of -3 matters as much as one of +3.", slip="signed-not-magnitude")
        return _verdict(False, f"at share {share} the pruned weights are not the {want} smallest |w|. "
                               f"Hint: sort w.abs().flatten() and mark the first round(share · numel).")
    return _verdict(True, "right: the smallest |w| go first; torch.nn.utils.prune.l1_unstructured does "
                          "the same and keeps the mask beside the weight until prune.remove.")


# ------------------------------------------------------------ chapter 06 (evaluating a student)

PREDICTIONS["temperature-accuracy"] = (
    "b", "Dividing every logit of an input by the same T > 0 keeps their order, so the arg-max, and the "
         "accuracy, cannot change. Only the confidence moves: T > 1 softens an over-confident model, T < 1 "
         "sharpens an under-confident one. That is why temperature scaling is the standard first fix.")


def _calibration_case(seed: int = 6, n: int = 3000, c: int = 10):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.multinomial((logits / 2.0).softmax(-1), 1, generator=g)[:, 0]   # drawn at T = 2
    return logits, labels


@checker("ece")
def check_ece(fn) -> Verdict:
    """``fn(probs, labels, n_bins)`` should be the ECE with ``n_bins`` equal-width confidence bins
    ``((b-1)/n_bins, b/n_bins]``: the gap |accuracy - mean confidence| of each bin, weighted by the
    share of examples in it (``metrics.expected_calibration_error``)."""
    logits, labels = _calibration_case()
    for n_bins in (15, 5):
        probs = logits.softmax(-1)
        got, err = _call(fn, probs.clone(), labels.clone(), n_bins)
        if err:
            return _verdict(False, err)
        if got is None:
            return _verdict(False, "your function returned None: bin the confidences (top probabilities), then "
                                   "add up |accuracy - confidence| per bin, weighted by the bin's share of examples.")
        want = metrics.expected_calibration_error(probs, labels, n_bins)
        got = float(got)
        if abs(got - want) < 1e-4:
            continue
        b = metrics.reliability_bins(probs, labels, n_bins)
        keep = b["count"] > 0
        if abs(got - float((b["accuracy"][keep] - b["confidence"][keep]).abs().mean())) < 1e-4:
            return _verdict(False, "you averaged the bins' gaps equally: weight each bin's gap by its share of "
                                   "the examples (|B_b| / N), so a bin of 3 inputs counts less than one of 3,000.",
                            slip="unweighted-bins")
        conf, pred = probs.max(-1)
        if abs(got - abs(float((pred == labels).float().mean() - conf.mean()))) < 1e-4:
            return _verdict(False, "that is one bin over everything (overall accuracy vs mean confidence): split "
                                   "the confidences into n_bins equal-width bins first; errors in opposite "
                                   "directions must not cancel.", slip="one-bin")
        return _verdict(False, f"with {n_bins} bins you got {got:.4f}, expected {want:.4f}. Confidence is the "
                               f"largest probability; a bin is right-closed, ((b-1)/n, b/n].")
    return _verdict(True, "your ECE matches the lab's (and torchmetrics') on 5 and 15 bins.")


@checker("fitted_temperature")
def check_fitted_temperature(fn) -> Verdict:
    """``fn(val_logits, val_labels)`` should return the temperature T > 0 that minimises the NLL of
    ``softmax(logits / T)`` on the validation data (temperature scaling, Guo et al. 2017)."""
    logits, labels = _calibration_case()
    got, err = _call(fn, logits.clone(), labels.clone())
    if err:
        return _verdict(False, err)
    if got is None:
        return _verdict(False, "your function returned None: search T > 0 (a grid, or an optimiser on log T) for "
                               "the smallest cross_entropy(logits / T, labels).")
    t = float(got)
    nll = lambda temp: float(F.cross_entropy(logits / temp, labels))
    best = min((nll(x / 100), x / 100) for x in range(20, 801, 2))[1]
    if not t > 0:
        return _verdict(False, f"T = {t} is not positive: fit log T, or keep the search above 0.", slip="not-positive")
    if abs(t - 1.0) < 1e-6:
        return _verdict(False, "T = 1.0 leaves the model as it was; these logits were made over-confident on "
                               "purpose: minimise the NLL over T.", slip="untuned")
    if abs(1 / t - best) / best < 0.05:
        return _verdict(False, f"you returned {t:.3f}, about 1 / {best:.2f}: the model's logits are divided by T "
                               f"(softmax(z / T)); check where T goes.", slip="inverted-T")
    if nll(t) - nll(best) > 1e-3:
        return _verdict(False, f"T = {t:.3f} gives NLL {nll(t):.4f}, but T = {best:.2f} gives {nll(best):.4f}: "
                               f"minimise the NLL on the validation logits.")
    return _verdict(True, f"T = {t:.3f} minimises the validation NLL (the labels were drawn at T = 2).")
