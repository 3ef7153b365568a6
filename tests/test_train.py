"""fit / distill on a tiny MNIST subset: history, weight updates, determinism, checks, early stopping."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdlab_lib import metrics, models, train
from kdlab_lib.core.train import DistillConfig, FitConfig, History


def new_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.mlp((30, 30))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def teacher(tiny_train):
    """A stand-in teacher: an MLP trained for two quick epochs (the real one is not needed).

    It has dropout, so a teacher left in training mode would give other logits.
    """
    torch.manual_seed(42)
    model = models.mlp((30, 30), dropout=0.3)
    train.fit(model, tiny_train, FitConfig(epochs=2, max_shift=0, lr=5e-3), progress=False)
    return model


# ------------------------------------------------------------------------ fit


def test_fit_returns_a_history_and_changes_the_weights(tiny_train):
    model = new_mlp()
    before = weights(model)
    history = train.fit(model, tiny_train, FitConfig(epochs=1, max_shift=2), progress=False)
    assert isinstance(history, History)
    assert len(history.records) == 1
    record = history.last
    assert record["epoch"] == 1 and record["loss"] > 0 and record["seconds"] >= 0
    assert "val_errors" not in record
    assert history.settings["epochs"] == 1 and history.settings["max_shift"] == 2
    assert history.column("epoch") == [1]
    assert history.seconds == pytest.approx(record["seconds"])
    after = weights(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every tensor was trained
    assert not model.training  # handed back in eval mode


def test_fit_learns_something(tiny_train, tiny_val):
    model = new_mlp()
    untrained = metrics.error_count(metrics.predict(model, tiny_val), tiny_val.tensors[1])
    history = train.fit(model, tiny_train, FitConfig(epochs=3, batch_size=64, max_shift=0, lr=5e-3),
                        val_set=tiny_val, progress=False)
    losses = history.column("loss")
    assert losses[-1] < losses[0]
    errors = metrics.error_count(metrics.predict(model, tiny_val), tiny_val.tensors[1])
    assert errors == history.last["val_errors"]  # the record is the model's real val error
    assert errors < 0.5 * untrained


def test_same_seed_same_weights_and_another_seed_differs(tiny_train):
    runs = []
    for seed in (0, 0, 1):
        model = new_mlp()
        train.fit(model, tiny_train, FitConfig(epochs=1, max_shift=2, seed=seed), progress=False)
        runs.append(weights(model))
    assert same(runs[0], runs[1])
    assert not same(runs[0], runs[2])  # the seed drives shuffling and jitter


@pytest.mark.parametrize("cfg", [FitConfig(epochs=0), FitConfig(batch_size=0)])
def test_bad_epochs_or_batch_size_raise(tiny_train, cfg):
    with pytest.raises(ValueError, match="epochs and batch_size"):
        train.fit(new_mlp(), tiny_train, cfg, progress=False)


# -------------------------------------------------------------------- distill


def test_distill_returns_a_history_and_changes_the_weights(tiny_train, teacher):
    student = new_mlp(1)
    before, teacher_before = weights(student), weights(teacher)
    history = train.distill(student, teacher, tiny_train,
                            DistillConfig(epochs=1, temperature=4.0, alpha=0.1), progress=False)
    assert isinstance(history, History) and len(history.records) == 1
    assert history.settings["temperature"] == 4.0 and history.settings["alpha"] == 0.1
    after = weights(student)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert same(teacher_before, weights(teacher))  # the teacher is never trained


def test_distill_is_deterministic(tiny_train, teacher):
    runs = []
    for _ in range(2):
        student = new_mlp(1)
        train.distill(student, teacher, tiny_train, DistillConfig(epochs=1, max_shift=1), progress=False)
        runs.append(weights(student))
    assert same(*runs)


def test_distill_pulls_the_student_towards_the_teacher(tiny_train, tiny_val, teacher):
    student = new_mlp(1)
    t_logits = metrics.predict(teacher, tiny_val)
    before = metrics.kl_to_teacher(metrics.predict(student, tiny_val), t_logits)
    train.distill(student, teacher, tiny_train,
                  DistillConfig(epochs=2, max_shift=0, alpha=0.0, lr=5e-3), progress=False)
    after = metrics.kl_to_teacher(metrics.predict(student, tiny_val), t_logits)
    assert after < 0.5 * before


def test_precomputed_teacher_logits_give_the_same_student_as_the_live_teacher(tiny_train, teacher):
    cfg = DistillConfig(epochs=1, max_shift=0, temperature=3.0, alpha=0.3)
    live, cached = new_mlp(1), new_mlp(1)
    train.distill(live, teacher, tiny_train, cfg, progress=False)
    logits = metrics.predict(teacher, tiny_train)
    history = train.distill(cached, logits, tiny_train, cfg, progress=False)
    assert len(history.records) == 1
    a, b = weights(live), weights(cached)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    # and it is the teacher that matters: other logits give another student
    other = new_mlp(1)
    train.distill(other, torch.randn_like(logits) * 5, tiny_train, cfg, progress=False)
    assert not torch.allclose(weights(other)["1.weight"], a["1.weight"], atol=1e-4)


def test_precomputed_logits_are_refused_with_jitter_or_the_wrong_length(tiny_train, teacher):
    logits = metrics.predict(teacher, tiny_train)
    student = new_mlp(1)
    before = weights(student)
    with pytest.raises(ValueError, match="max_shift"):
        train.distill(student, logits, tiny_train, DistillConfig(epochs=1, max_shift=2), progress=False)
    with pytest.raises(ValueError, match="cover 511 examples"):
        train.distill(student, logits[:-1], tiny_train, DistillConfig(epochs=1, max_shift=0),
                      progress=False)
    assert same(before, weights(student))


class ExplodingTeacher(nn.Module):
    def forward(self, x):
        raise AssertionError("the teacher ran, so training started before the settings were checked")


@pytest.mark.parametrize("field,value,word", [
    ("temperature", 0.0, "temperature"), ("temperature", -2.0, "temperature"),
    ("temperature", float("nan"), "temperature"),
    ("alpha", 1.5, "alpha"), ("alpha", -0.1, "alpha"),
])
def test_bad_temperature_or_alpha_raise_before_training(tiny_train, field, value, word):
    student = new_mlp(1)
    before = weights(student)
    cfg = DistillConfig(epochs=1, **{field: value})
    with pytest.raises(ValueError, match=word):
        train.distill(student, ExplodingTeacher(), tiny_train, cfg, progress=False)
    assert same(before, weights(student))


# --------------------------------------------------------------- early stopping


def test_early_stopping_stops_and_restores_the_best_weights(tiny_train, tiny_val, monkeypatch):
    """Scripted validation errors 50, 30, 40, 45, ...: best at epoch 2, stop after epoch 4."""
    scripted = iter([50, 30, 40, 45, 20, 10])
    snapshots = []
    real_predict = metrics.predict

    def recording_predict(model, data, **kw):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return real_predict(model, data, **kw)

    monkeypatch.setattr(metrics, "predict", recording_predict)
    monkeypatch.setattr(metrics, "error_count", lambda logits, labels: next(scripted))
    model = new_mlp()
    history = train.fit(model, tiny_train, FitConfig(epochs=6, max_shift=0, patience=2),
                        val_set=tiny_val, progress=False)
    assert history.column("val_errors") == [50, 30, 40, 45]
    assert history.best_epoch == 2
    assert len(snapshots) == 4
    assert same(weights(model), snapshots[1])
    assert not same(snapshots[1], snapshots[3])  # it really moved away, then came back


def test_early_stopping_on_real_validation_errors(tiny_train, tiny_val):
    model = new_mlp()
    history = train.fit(model, tiny_train, FitConfig(epochs=4, max_shift=0, lr=5e-3, patience=1),
                        val_set=tiny_val, progress=False)
    errors = history.column("val_errors")
    best = min(errors)
    assert history.best_epoch == errors.index(best) + 1
    # the weights handed back are the best epoch's, whatever came after it
    assert metrics.error_count(metrics.predict(model, tiny_val), tiny_val.tensors[1]) == best
    # patience 1: it stops at the first epoch that does not improve
    worse = [i for i in range(1, len(errors)) if errors[i] >= min(errors[:i])]
    assert len(errors) == (worse[0] + 1 if worse else 4)


def test_without_patience_all_epochs_run(tiny_train, tiny_val, monkeypatch):
    scripted = iter([10, 20, 30])
    monkeypatch.setattr(metrics, "error_count", lambda logits, labels: next(scripted))
    history = train.fit(new_mlp(), tiny_train, FitConfig(epochs=3, max_shift=0),
                        val_set=tiny_val, progress=False)
    assert history.column("val_errors") == [10, 20, 30]
    assert history.best_epoch is None


# ------------------------------------------------------------ the reference loop, one epoch

def _float64_pair(seed=0):
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4)).double()
    student = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g))
               for n in (32, 32, 7)]   # a short last batch
    return teacher, student, batches


def _by_hand(student, teacher, batches, lr, T, alpha):
    """The same epoch written out from the formulas: SGD on alpha·CE + (1-alpha)·T²·KL(p_T || p_S)."""
    teacher.eval()
    total, count = 0.0, 0
    for x, y in batches:
        with torch.no_grad():
            p = torch.softmax(teacher(x) / T, -1)                                      # (B, C)
        z = student(x)                                                                  # (B, C)
        log_q = torch.log_softmax(z / T, -1)
        kl = (p * (p.log() - log_q)).sum(-1).mean()
        ce = -torch.log_softmax(z, -1).gather(1, y[:, None]).mean()
        loss = alpha * ce + (1 - alpha) * T * T * kl
        grads = torch.autograd.grad(loss, list(student.parameters()))
        with torch.no_grad():
            for w, gw in zip(student.parameters(), grads):
                w -= lr * gw
        total, count = total + float(loss.detach()) * len(y), count + len(y)
    return total / count


def test_distill_epoch_is_the_formula_step_by_step_in_float64():
    teacher, student, batches = _float64_pair()
    reference = copy.deepcopy(student)
    teacher.train()   # handed over in train mode: the loop must put it in eval mode (it has dropout)
    steps = []
    got = train.distill_epoch(student, teacher, batches, torch.optim.SGD(student.parameters(), lr=0.1), 4.0, 0.3,
                              after_step=lambda: steps.append(1))
    want = _by_hand(reference, teacher, batches, 0.1, 4.0, 0.3)
    assert got == pytest.approx(want, rel=1e-10)
    for a, b in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert len(steps) == 3 and not teacher.training and student.training
    assert all(p.grad is None for p in teacher.parameters())   # the teacher ran without gradients


def test_distill_epoch_with_precomputed_teacher_logits_is_the_same_epoch():
    teacher, student, batches = _float64_pair(seed=1)
    twin = copy.deepcopy(student)
    teacher.eval()
    with torch.no_grad():
        cached = [(x, y, teacher(x)) for x, y in batches]
    a = train.distill_epoch(student, teacher, batches, torch.optim.SGD(student.parameters(), lr=0.1), 2.0, 0.5)
    b = train.distill_epoch(twin, None, cached, torch.optim.SGD(twin.parameters(), lr=0.1), 2.0, 0.5)
    assert a == b and all(torch.equal(p, q) for p, q in zip(student.parameters(), twin.parameters()))
