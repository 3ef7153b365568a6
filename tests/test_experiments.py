"""Chapter experiments in quick mode: what they report is what the library measures."""
from __future__ import annotations

import pytest
import torch

from kdlab_lib import config, datasets, metrics, models
from kdlab_lib.chapters import ch01_soft_labels as ch01


@pytest.fixture(scope="module")
def teacher():
    return models.load_teacher("mnist", device="cpu")


def test_quick_budget_is_small_and_overridable():
    assert config.QUICK
    b = ch01.budget()
    assert b.epochs == 1 and b.n_train <= 2_000 and b.n_test <= 2_000
    assert ch01.budget(hidden=(30, 30)).hidden == (30, 30)
    assert ch01.MnistBudget().hidden == (800, 800)  # Hinton's small net in classroom mode


def test_scratch_vs_distilled_reports_its_own_measurements(teacher):
    b = ch01.budget(hidden=(30, 30), n_train=500, n_test=500)
    run = ch01.scratch_vs_distilled(teacher, b, seed=0, progress=False)
    y = run["test_set"].tensors[1]
    assert len(y) == 500
    for name in ("teacher", "scratch", "distilled"):
        assert run["errors"][name] == metrics.error_count(run["logits"][name], y)
    e = run["errors"]
    assert run["gap_closed"] == pytest.approx(metrics.gap_closed(e["teacher"], e["scratch"], e["distilled"]),
                                              nan_ok=True)
    torch.testing.assert_close(run["logits"]["distilled"],
                               metrics.predict(run["models"]["distilled"], run["test_set"]))


def test_omit_budget_halves_only_the_epochs():
    b = ch01.MnistBudget(epochs=20)
    assert ch01.omit_budget(b) == ch01.MnistBudget(epochs=10)
    assert ch01.omit_budget(ch01.MnistBudget(epochs=1)).epochs == 1


def test_omit_class_never_sees_the_class_and_picks_its_bias_on_validation(teacher):
    b = ch01.budget(hidden=(30, 30), n_train=800, n_test=500)
    omit = ch01.omit_class(teacher, b, cls=3, seed=0, progress=False)
    kept = ch01.transfer_set(b, without=[3])
    assert omit["transfer_size"] == len(kept) and not (kept.tensors[1] == 3).any()
    val_y = datasets.load_mnist("val").tensors[1]
    assert omit["chosen_bias"] == metrics.choose_class_bias(omit["val_logits"], val_y, 3, ch01.BIAS_GRID)
    for key, bias in (("before", 0.0), ("after", omit["chosen_bias"])):
        assert omit[key] == metrics.class_bias_effect(omit["test_logits"], omit["test_labels"], 3, bias)


def test_sweeps_return_one_result_per_setting(teacher):
    b = ch01.budget(hidden=(30, 30), n_train=300, n_test=300)
    sweep = ch01.temperature_sweep(teacher, b, [1, 4], progress=False)
    assert list(sweep) == [1.0, 4.0] and all(0 <= v <= 300 for v in sweep.values())
    alphas = ch01.alpha_sweep(teacher, b, [0.0, 1.0], progress=False)
    assert list(alphas) == [0.0, 1.0]
    with pytest.raises(ValueError, match="temperature"):
        ch01.temperature_sweep(teacher, b, [0.0], progress=False)


def test_precomputed_targets_give_the_same_student(teacher):
    b = ch01.budget(hidden=(30, 30), n_train=400, n_test=300)
    targets = ch01.teacher_targets(teacher, ch01.transfer_set(b))
    a = ch01.temperature_sweep(teacher, b, [2.0], progress=False)
    c = ch01.temperature_sweep(teacher, b, [2.0], progress=False, targets=targets)
    assert a == c
    omit = ch01.omit_class(teacher, b, cls=3, progress=False, targets=targets)
    assert omit["transfer_size"] == int((ch01.transfer_set(b).tensors[1] != 3).sum())
    with pytest.raises(ValueError, match="targets cover"):
        ch01.omit_class(teacher, b, cls=3, progress=False, targets=targets[:10])


def test_first_distillation_check_counts_its_own_wins(teacher):
    check = ch01.first_distillation_check(teacher, seeds=(0, 1))
    assert check["seeds"] == [0, 1] and len(check["per_seed"]) == 2
    assert check["wins"] == sum(r["distilled"] < r["scratch"] for r in check["per_seed"])
    again = ch01.scratch_vs_distilled(teacher, ch01.first_budget(), seed=1, progress=False)
    assert (check["per_seed"][1]["scratch"], check["per_seed"][1]["distilled"]) == \
        (again["errors"]["scratch"], again["errors"]["distilled"])
    with pytest.raises(ValueError, match="at least one seed"):
        ch01.first_distillation_check(teacher, seeds=())


def test_first_budget_is_notebook_00s_and_the_shipped_check_used_it():
    from dataclasses import asdict

    from kdlab_lib import store
    b = ch01.first_budget()
    assert b.n_train == 2_000 and b.temperature == 8.0 and b.hidden == (100, 100) and b.epochs == 2  # quick
    check = store.read_results("mnist")["first_distillation"]
    assert check["quick"] is False and len(check["seeds"]) >= 5
    assert check["budget"] == {**asdict(ch01.MnistBudget()), **ch01.FIRST_DISTILLATION, "hidden": [100, 100]}
    assert check["wins"] == sum(r["distilled"] < r["scratch"] for r in check["per_seed"])


def test_first_distillation_verdict_says_what_one_seed_and_the_check_measured():
    errors = {"scratch": 10, "distilled": 8, "teacher": 1}
    check = {"command": "kdlab bench mnist", "wins": 1,
             "per_seed": [{"scratch": 10, "distilled": 8}, {"scratch": 9, "distilled": 10}]}
    text = ch01.first_distillation_verdict(errors, check)
    assert "2 fewer" in text and "won on 1 of 2 seeds" in text and "9.5 → 9.0" in text
    worse = ch01.first_distillation_verdict({"scratch": 8, "distilled": 10, "teacher": 1})
    assert "2 more" in worse and "did not pay off" in worse and "seeds" not in worse
