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
