"""Every checker is proven both ways: the solution passes, a known-wrong answer gets its hint."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab_lib import exercises


def good_soften(z, T):
    return torch.softmax(z / T, dim=-1)


def good_kd(s, t, T):
    return T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")


def test_soften_checker(capsys):
    assert exercises.check_soften(good_soften) is True
    assert "✅" in capsys.readouterr().out
    cases = {
        (lambda z, T: None): "returned None",
        (lambda z, T: torch.softmax(z, -1)): "divide the logits by T",
        (lambda z, T: torch.softmax(z * T, -1)): "multiplied by T",
        (lambda z, T: torch.softmax(z / T, 0)): "wrong dimension",
        (lambda z, T: z / T): "sums to 1",
        (lambda z, T: 1 / 0): "raised ZeroDivisionError",
    }
    for fn, hint in cases.items():
        assert exercises.check_soften(fn) is False
        out = capsys.readouterr().out
        assert out.startswith("Not yet") and hint in out, out


def test_kd_loss_checker(capsys):
    assert exercises.check_kd_loss(good_kd) is True
    assert "✅" in capsys.readouterr().out
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
        assert exercises.check_kd_loss(fn) is False
        out = capsys.readouterr().out
        assert out.startswith("Not yet") and hint in out, out


def test_temperature_choice_checker(capsys):
    sweep = {"1": 300, "2": 260, "4": 250, "8": 280, "20": 330}
    assert exercises.check_temperature_choice(4.0, sweep) is True
    assert exercises.check_temperature_choice(20, sweep) is False
    assert "T = 4 gives 250" in capsys.readouterr().out
    assert exercises.check_temperature_choice(None, sweep) is False
    assert exercises.check_temperature_choice(3.0, sweep) is False
    assert "measured" in capsys.readouterr().out


def test_prediction_checker(capsys):
    assert exercises.check_prediction("high-T", "c") is True
    assert exercises.check_prediction("high-T", "a") is False
    assert "the answer is (c)" in capsys.readouterr().out
    assert exercises.check_prediction("high-T", None) is False
    assert exercises.check_prediction("nope", "a") is False
