"""Every checker is proven both ways: the solution passes, a known-wrong answer gets its hint."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kdlab_lib import exercises, losses


def good_soften(z, T):
    return torch.softmax(z / T, dim=-1)


def good_kd(s, t, T):
    return T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")


def test_soften_checker():
    v = exercises.check_soften(good_soften)
    assert v and str(v).startswith("✅")
    cases = {
        (lambda z, T: None): "returned None",
        (lambda z, T: torch.softmax(z, -1)): "divide the logits by T",
        (lambda z, T: torch.softmax(z * T, -1)): "multiplied by T",
        (lambda z, T: torch.softmax(z / T, 0)): "wrong dimension",
        (lambda z, T: z / T): "sums to 1",
        (lambda z, T: 1 / 0): "raised ZeroDivisionError",
    }
    for fn, hint in cases.items():
        v = exercises.check_soften(fn)
        assert not v and str(v).startswith("Not yet") and hint in str(v), str(v)
        assert "Not yet" in v._repr_html_()


def test_kd_loss_checker():
    v = exercises.check_kd_loss(good_kd)
    assert v and str(v).startswith("✅")
    cases = {
        (lambda s, t, T: None): "returned None",
        (lambda s, t, T: F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
                                  reduction="batchmean")): "T² factor",
        (lambda s, t, T: T * T * F.kl_div(F.log_softmax(t / T, -1), F.softmax(s / T, -1),
                                          reduction="batchmean")): "wrong way round",
        (lambda s, t, T: T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
                                          reduction="sum")): "summed over the batch",
        (lambda s, t, T: T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
                                          reduction="mean")): "batchmean",
        (lambda s, t, T: T * T * F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1),
                                          reduction="batchmean")): "not softened",
        (lambda s, t, T: s.sum() * 0): "the library gives",
    }
    for fn, hint in cases.items():
        v = exercises.check_kd_loss(fn)
        assert not v and str(v).startswith("Not yet") and hint in str(v), str(v)


def _autograd_kl_gradient(s, t, T):
    z = s.detach().clone().requires_grad_()
    losses.forward_kl(z, t, temperature=T).backward()
    return z.grad


def test_kl_gradient_checker_both_ways():
    assert exercises.check_kl_gradient(_autograd_kl_gradient)
    slips = {lambda s, t, T: T * T * _autograd_kl_gradient(s, t, T): "T2-scaled",
             lambda s, t, T: T * _autograd_kl_gradient(s, t, T): "missing-1/T",
             lambda s, t, T: -_autograd_kl_gradient(s, t, T): "reversed",
             lambda s, t, T: _autograd_kl_gradient(s, t, 1.0): "untempered"}
    for fn, slip in slips.items():
        v = exercises.check_kl_gradient(fn)
        assert not v and v.slip == slip, (slip, str(v))
    for fn, hint in {lambda s, t, T: torch.zeros_like(s): "all zeros", lambda s, t, T: None: "shaped like",
                     lambda s, t, T: _autograd_kl_gradient(s, t, T) + 1e-3: "largest gap"}.items():
        v = exercises.check_kl_gradient(fn)
        assert not v and v.slip is None and hint in str(v), str(v)


def test_the_closed_form_is_autograds_and_falls_as_one_over_T_squared():
    s, t = exercises.gradient_logits()
    for T in exercises.GRADIENT_TEMPERATURES:
        assert torch.allclose(exercises.kl_gradient(s, t, T), _autograd_kl_gradient(s, t, T), rtol=1e-9, atol=1e-15)
    norms = {T: float(exercises.kl_gradient(s, t, T).norm()) for T in exercises.GRADIENT_TEMPERATURES}
    assert -2.2 < exercises.gradient_power(norms) < -1.8


def test_gradient_power_checker():
    s, t = exercises.gradient_logits()
    norms = {T: float(_autograd_kl_gradient(s, t, T).norm()) for T in exercises.GRADIENT_TEMPERATURES}
    assert exercises.check_gradient_power(norms, -2)
    assert "now set my_power" in str(exercises.check_gradient_power(norms, None))
    v = exercises.check_gradient_power(norms, -1)
    assert not v and "slope of log |gradient| on log T is -2.0" in str(v)
    v = exercises.check_gradient_power({T: n * T * T for T, n in norms.items()}, 0)
    assert not v and v.slip == "T2-scaled"
    assert "measure the norm at each T" in str(exercises.check_gradient_power({1.0: norms[1.0]}, -2))
    assert "norms should be a dict" in str(exercises.check_gradient_power(None, -2))
    assert "should be a number" in str(exercises.check_gradient_power(norms, "steep"))


def test_prediction_checker():
    assert exercises.check_prediction("high-T", " C ")
    v = exercises.check_prediction("high-T", "a")
    assert not v and "the answer is (c)" in str(v)
    assert not exercises.check_prediction("high-T", None)
    assert not exercises.check_prediction("nope", "a")


def good_cosine(s, t, mask):
    return (1 - F.cosine_similarity(s, t, dim=-1))[mask].mean()


def test_cosine_checker():
    assert exercises.check_cosine_hidden_loss(good_cosine)
    cases = {
        (lambda s, t, m: None): "returned None",
        (lambda s, t, m: F.cosine_similarity(s, t, dim=-1)[m].mean()): "1 - cos",
        (lambda s, t, m: (1 - F.cosine_similarity(s, t, dim=-1)).mean()): "padded positions",
        (lambda s, t, m: (1 + F.cosine_similarity(s, t, dim=-1))[m].mean()): "opposite directions",
        (lambda s, t, m: (1 - F.cosine_similarity(s, t, dim=-1))[m].sum()): "summed",
        (lambda s, t, m: (s - t).pow(2).mean()): "cosine_similarity",
        (lambda s, t, m: s.nope): "raised AttributeError",
    }
    for fn, hint in cases.items():
        v = exercises.check_cosine_hidden_loss(fn)
        assert not v and hint in str(v), str(v)


def test_layer_choice_checker_re_measures_the_readers_table():
    from kdlab_lib.chapters import ch02_distilbert as ch02
    teacher, tok = ch02.load()
    scores = ch02.layer_pair_scores(teacher, tok, ch02.layer_probe(tok))
    best = max(scores, key=scores.get)
    worst = min(scores, key=scores.get)
    assert exercises.check_layer_choice(scores, list(best))
    assert exercises.check_layer_choice({(j, i): v for (i, j), v in scores.items()}, best[::-1])   # order-free
    v = exercises.check_layer_choice(scores, list(worst))
    assert not v and v.slip == "not-the-best" and f"{list(best)} at" in str(v)
    assert "now set my_layers" in str(exercises.check_layer_choice(scores, None))
    v = exercises.check_layer_choice({**scores, best: scores[best] + 0.01}, list(best))
    assert not v and v.slip == "other-split"
    assert "15 pairs); you have 14" in str(exercises.check_layer_choice(dict(list(scores.items())[:14]), None))
    assert "should be a dict" in str(exercises.check_layer_choice(None, None))
    assert "two layer indices" in str(exercises.check_layer_choice(scores, "ab"))
    assert "pick two distinct" in str(exercises.check_layer_choice(scores, [0, 0]))


def test_reverse_kl_prediction():
    assert exercises.check_prediction("reverse-kl", "b")
    assert "one peak" in str(exercises.check_prediction("reverse-kl", "a"))


def good_token_kd(s, t, mask, T):
    log_t, log_s = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
    return T * T * (log_t.exp() * (log_t - log_s)).sum(-1)[mask].mean()


def test_token_kd_loss_checker():
    assert exercises.check_token_kd_loss(good_token_kd)
    no_mask = lambda s, t, mask, T: good_token_kd(s, t, torch.ones_like(mask), T)
    assert "padded positions" in str(exercises.check_token_kd_loss(no_mask))
    reverse = lambda s, t, mask, T: good_token_kd(t, s, mask, T)
    assert "reverse KL" in str(exercises.check_token_kd_loss(reverse))
    no_t2 = lambda s, t, mask, T: good_token_kd(s, t, mask, T) / (T * T)
    assert "T² factor is missing" in str(exercises.check_token_kd_loss(no_t2))
    assert "returned None" in str(exercises.check_token_kd_loss(lambda *a: None))
    assert "raised ZeroDivisionError" in str(exercises.check_token_kd_loss(lambda *a: 1 / 0))


def test_topk_bytes_checker():
    assert exercises.check_topk_bytes(lambda v, k: k * (2 + (2 if v <= 65_536 else 4)))
    assert "uint16" in str(exercises.check_topk_bytes(lambda v, k: k * 4))      # always 2-byte indices
    assert "values only" in str(exercises.check_topk_bytes(lambda v, k: 2 * k))
    assert "full fp16 logits" in str(exercises.check_topk_bytes(lambda v, k: 2 * v))
    assert not exercises.check_topk_bytes(lambda v, k: None)


def test_every_checker_names_its_exercise_and_logs_one_line_for_kdlab_grade(tmp_path, monkeypatch):
    log = tmp_path / "grade.jsonl"
    monkeypatch.setenv(exercises.GRADE_LOG, str(log))
    right = exercises.check_soften(lambda z, t: torch.softmax(z / t, -1))
    wrong = exercises.check_prediction("capacity-gap", None)
    assert right.ok and right.exercise == "soften" and wrong.exercise == "prediction:capacity-gap"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines == [{"exercise": "soften", "ok": True, "slip": None},
                     {"exercise": "prediction:capacity-gap", "ok": False, "slip": None}]


def test_a_checker_that_breaks_on_an_answer_says_not_yet_instead_of_raising(monkeypatch):
    monkeypatch.delenv(exercises.GRADE_LOG, raising=False)

    class Weird:   # a "number" whose comparisons raise
        def __float__(self):
            raise RuntimeError("no float for you")
    s, t = exercises.gradient_logits()
    norms = {T: float(exercises.kl_gradient(s, t, T).norm()) for T in exercises.GRADIENT_TEMPERATURES}
    v = exercises.check_gradient_power(norms, Weird())
    assert not v.ok and v.exercise == "gradient_power"


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides")   # the slip F.kl_div warns about
def test_the_checkers_name_the_slips_they_recognise_for_kdlab_grade():
    kl = lambda s, t, T, reduction="batchmean": F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
                                                         reduction=reduction)
    probs = lambda ls: torch.stack([x.softmax(-1) for x in ls])

    def signed_mask(w, share):
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[w.flatten().argsort()[:round(share * w.numel())]] = False
        return keep.view_as(w)

    def unweighted_ece(p, y, n):
        from kdlab_lib import metrics
        b = metrics.reliability_bins(p, y, n)
        keep = b["count"] > 0
        return float((b["accuracy"][keep] - b["confidence"][keep]).abs().mean())

    cases = [
        (exercises.check_soften, lambda z, T: torch.softmax(z, -1), "no-temperature"),
        (exercises.check_soften, lambda z, T: torch.softmax(z * T, -1), "times-T"),
        (exercises.check_soften, lambda z, T: torch.softmax(z / T, 0), "wrong-dim"),
        (exercises.check_kd_loss, lambda s, t, T: kl(s, t, T), "missing-T2"),
        (exercises.check_kd_loss, lambda s, t, T: T * T * kl(t, s, T), "reversed-kl"),
        (exercises.check_kd_loss, lambda s, t, T: T * T * kl(s, t, T, "sum"), "summed"),
        (exercises.check_kd_loss, lambda s, t, T: T * T * kl(s, t, T, "mean"), "reduction-mean"),
        (exercises.check_kd_loss, lambda s, t, T: T * T * kl(s, t, 1.0), "not-softened"),
        (exercises.check_cosine_hidden_loss, lambda s, t, m: F.cosine_similarity(s, t, dim=-1)[m].mean(),
         "cosine-not-loss"),
        (exercises.check_cosine_hidden_loss, lambda s, t, m: (1 - F.cosine_similarity(s, t, dim=-1)).mean(),
         "padding-counted"),
        (exercises.check_token_kd_loss, lambda s, t, m, T: good_token_kd(s, t, torch.ones_like(m), T),
         "padding-counted"),
        (exercises.check_token_kd_loss, lambda s, t, m, T: good_token_kd(t, s, m, T), "reversed-kl"),
        (exercises.check_token_kd_loss, lambda s, t, m, T: good_token_kd(s, t, m, T) / (T * T), "missing-T2"),
        (exercises.check_topk_bytes, lambda v, k: 2 * k, "values-only"),
        (exercises.check_topk_bytes, lambda v, k: k * 4, "index-width"),
        (exercises.check_ensemble, lambda ls: torch.stack(ls).mean(0).softmax(-1), "geometric-mean"),
        (exercises.check_ensemble, lambda ls: probs(ls).sum(0), "summed-probs"),
        (exercises.check_corrupt_labels, lambda y, share, seed: y.clone(), "nothing-flipped"),
        (exercises.check_magnitude_mask, signed_mask, "signed-not-magnitude"),
        (exercises.check_ece, unweighted_ece, "unweighted-bins"),
        (exercises.check_fitted_temperature, lambda z, y: 1.0, "untuned"),
    ]
    for check, fn, slip in cases:
        v = check(fn)
        assert not v.ok and v.slip == slip, (slip, str(v))
    assert exercises.check_prediction("high-T", "A").slip == "chose-a"
    assert exercises.check_prediction("high-T", "c").slip is None
    assert exercises.check_kd_loss(good_kd).slip is None
