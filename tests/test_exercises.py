"""Every checker is proven both ways: the solution passes, a known-wrong answer gets its hint."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab_lib import exercises


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


def test_temperature_choice_checker():
    sweep = {"1": 300, "2": 255, "4": 250, "8": 280, "20": 330}
    assert exercises.check_temperature_choice(4.0, sweep)
    assert exercises.check_temperature_choice("2", sweep)  # within 10% of the range of the best
    v = exercises.check_temperature_choice(20, sweep)
    assert not v and "T = 4 gives 250" in str(v)
    assert not exercises.check_temperature_choice(None, sweep)
    v = exercises.check_temperature_choice(3.0, sweep)
    assert not v and "measured" in str(v)


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


def test_layer_choice_checker():
    scores = {(0, 1): 0.10, (0, 2): 0.12, (0, 3): 0.30, (1, 2): 0.05, (1, 3): 0.25, (2, 3): 0.20}
    assert exercises.check_layer_choice([3, 0], scores)
    assert exercises.check_layer_choice((1, 3), scores)
    v = exercises.check_layer_choice([1, 2], scores)
    assert not v and "best pair, [0, 3]" in str(v)
    assert "pick two distinct" in str(exercises.check_layer_choice([0, 0], scores))
    assert "pick two distinct" in str(exercises.check_layer_choice([0, 7], scores))
    assert not exercises.check_layer_choice(None, scores)
    assert "two layer indices" in str(exercises.check_layer_choice("ab", scores))
