"""Metrics on hand-made logits, ECE against torchmetrics and by hand, gap tables."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError

from kdlab_lib import metrics
from kdlab_lib.core.tables import Table


def one_hot_logits(preds, n_classes: int = 10) -> torch.Tensor:
    """Logits whose arg-max is ``preds`` (with some noise so ties cannot happen)."""
    preds = torch.as_tensor(preds)
    noise = torch.rand(len(preds), n_classes, generator=torch.Generator().manual_seed(0))
    return noise + 5.0 * nn.functional.one_hot(preds, n_classes)


LOGITS = torch.tensor([[2.0, 1.0, 0.0],
                       [0.0, 3.0, 1.0],
                       [1.0, 0.0, 5.0],
                       [0.0, 1.0, 0.5]])  # arg-max: 0, 1, 2, 1
LABELS = torch.tensor([0, 2, 2, 1])       # one mistake: example 1 (true 2, predicted 1)


# ------------------------------------------------------ errors and agreement


def test_error_count_and_accuracy_on_hand_made_logits():
    assert metrics.error_count(LOGITS, LABELS) == 1
    assert metrics.accuracy(LOGITS, LABELS) == pytest.approx(0.75)
    assert metrics.error_count(LOGITS, torch.tensor([1, 0, 0, 0])) == 4
    assert metrics.accuracy(LOGITS, torch.tensor([0, 1, 2, 1])) == 1.0


def test_agreement_counts_matching_arg_maxes():
    teacher = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])  # 0, 1, 0, 2
    assert metrics.agreement(LOGITS, teacher) == pytest.approx(0.5)
    assert metrics.agreement(LOGITS, LOGITS * 3) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        metrics.agreement(LOGITS, teacher[:3])


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        metrics.error_count(LOGITS, LABELS[:3])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        metrics.accuracy(LOGITS[0], LABELS[:1])


def test_kl_to_teacher_is_the_mean_forward_kl(gen):
    s, t = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    for temperature in (1.0, 3.0):
        p = torch.softmax(t.double() / temperature, -1)
        q = torch.softmax(s.double() / temperature, -1)
        expected = float((p * (p / q).log()).sum(-1).mean())
        assert metrics.kl_to_teacher(s, t, temperature) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------- ECE


@pytest.mark.parametrize("n,c,sharp", [(1000, 10, 3.0), (500, 3, 1.0), (2000, 7, 6.0), (17, 2, 2.0)])
def test_ece_agrees_with_torchmetrics(n, c, sharp):
    g = torch.Generator().manual_seed(n + c)
    probs = torch.softmax(torch.randn(n, c, generator=g) * sharp, dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    # make the model right more often than chance, so both branches of |acc - conf| occur
    labels[: n // 2] = probs[: n // 2].argmax(-1)
    reference = MulticlassCalibrationError(num_classes=c, n_bins=15, norm="l1")(probs, labels)
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(float(reference), abs=1e-6)


def test_ece_agrees_with_torchmetrics_for_other_bin_counts():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(800, 5, generator=g) * 2, dim=-1)
    labels = torch.randint(0, 5, (800,), generator=g)
    for n_bins in (1, 5, 10, 30):
        reference = MulticlassCalibrationError(num_classes=5, n_bins=n_bins, norm="l1")(probs, labels)
        got = metrics.expected_calibration_error(probs, labels, n_bins=n_bins)
        assert got == pytest.approx(float(reference), abs=1e-6), n_bins


def test_ece_hand_computed_example():
    probs = torch.tensor([[0.90, 0.10],   # conf 0.90, correct  -> bin (0.8, 1.0]
                          [0.15, 0.85],   # conf 0.85, wrong    -> bin (0.8, 1.0]
                          [0.70, 0.30],   # conf 0.70, correct  -> bin (0.6, 0.8]
                          [0.35, 0.65],   # conf 0.65, correct  -> bin (0.6, 0.8]
                          [0.55, 0.45]])  # conf 0.55, wrong    -> bin (0.4, 0.6]
    labels = torch.tensor([0, 0, 0, 1, 1])
    # bins: 2/5 * |0.5 - 0.875| + 2/5 * |1 - 0.675| + 1/5 * |0 - 0.55| = 0.15 + 0.13 + 0.11
    assert metrics.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.39, abs=1e-6)
    # with a single bin it is |accuracy - mean confidence| = |0.6 - 0.73|
    assert metrics.expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.13, abs=1e-6)


def test_ece_bins_are_closed_on_the_right():
    # confidences exactly on bin edges (n_bins = 4): 0.75 is in (0.5, 0.75], 0.5 in (0.25, 0.5]
    probs = torch.tensor([[0.75, 0.25, 0.0],     # conf 0.75, correct
                          [0.5, 0.25, 0.25],     # conf 0.5, wrong
                          [1.0, 0.0, 0.0],       # conf 1.0, correct
                          [0.875, 0.125, 0.0]])  # conf 0.875, wrong
    labels = torch.tensor([0, 1, 0, 1])
    # 1/4 * |1 - 0.75| + 1/4 * |0 - 0.5| + 2/4 * |0.5 - 0.9375|
    expected = 0.0625 + 0.125 + 0.21875
    assert metrics.expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(expected, abs=1e-6)
    # (Guo et al.'s bins ((m-1)/M, m/M], as documented. torchmetrics 1.x bins [m/M, (m+1)/M)
    # instead, so the two differ only for confidences exactly on an edge, as here.)


def test_ece_extremes():
    certain = torch.eye(4)
    assert metrics.expected_calibration_error(certain, torch.arange(4)) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(certain, (torch.arange(4) + 1) % 4) == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_ece_accepts_any_float_dtype(dtype):
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(300, 4, generator=g, dtype=torch.float64) * 2, dim=-1)
    labels = torch.randint(0, 4, (300,), generator=g)
    expected = float(MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")(
        probs.to(dtype).float(), labels))
    assert metrics.expected_calibration_error(probs.to(dtype), labels) == pytest.approx(expected, abs=1e-6)


def test_ece_rejects_bad_probabilities():
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="softmax"):
        metrics.expected_calibration_error(torch.tensor([[2.0, -1.0], [0.5, 3.0]]), labels)  # logits
    with pytest.raises(ValueError, match="probabilities"):
        metrics.expected_calibration_error(torch.tensor([[1.2, -0.2], [0.5, 0.5]]), labels)  # negative
    with pytest.raises(ValueError, match="probabilities"):
        metrics.expected_calibration_error(torch.tensor([[0.3, 0.3], [0.5, 0.5]]), labels)  # sum 0.6
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        metrics.expected_calibration_error(torch.tensor([0.3, 0.7]), labels)
    with pytest.raises(ValueError, match="do not match"):
        metrics.expected_calibration_error(torch.tensor([[0.3, 0.7]]), labels)
    with pytest.raises(ValueError, match="n_bins"):
        metrics.expected_calibration_error(torch.tensor([[0.3, 0.7], [0.5, 0.5]]), labels, n_bins=0)


# -------------------------------------------------------- per class and gaps


def test_per_class_errors_and_confusion_pairs():
    labels = torch.tensor([3, 3, 3, 3, 4, 4, 7, 0, 0, 5])
    preds = torch.tensor([5, 5, 5, 3, 9, 9, 1, 0, 0, 5])
    logits = one_hot_logits(preds)
    assert metrics.per_class_errors(logits, labels).tolist() == [0, 0, 0, 3, 2, 0, 0, 1, 0, 0]
    assert metrics.per_class_errors(logits, labels, n_classes=12).shape == (12,)
    assert metrics.confusion_pairs(logits, labels) == [(3, 5, 3), (4, 9, 2), (7, 1, 1)]
    assert metrics.confusion_pairs(logits, labels, top=2) == [(3, 5, 3), (4, 9, 2)]
    assert metrics.confusion_pairs(logits, preds) == []  # no mistake, no pair


def test_gap_table_rows_and_total():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    teacher = one_hot_logits([0, 0, 1, 1, 2, 2, 2, 2, 2], 3)   # 1 error, in class 1
    student = one_hot_logits([0, 1, 0, 0, 2, 1, 1, 1, 2], 3)   # errors: class 0: 1, 1: 3, 2: 3
    table = metrics.gap_table({"teacher": teacher, "student": student}, labels, teacher="teacher",
                              class_names=["zero", "one", "two"])
    assert isinstance(table, Table)
    assert table.headers == ["class", "n", "teacher errors", "student errors", "student − teacher"]
    rows = {r[0]: r for r in table.rows}
    assert rows["zero"] == ["zero", 2, 0, 1, 1]
    assert rows["one"] == ["one", 3, 1, 3, 2]
    assert rows["two"] == ["two", 4, 0, 3, 3]
    assert table.rows[-1] == ["all", 9, 1, 7, 6]
    assert [r[0] for r in table.rows[:-1]] == ["two", "one", "zero"]  # largest gap first
    assert "student − teacher" in str(table)


def test_gap_table_with_two_students_and_a_missing_teacher():
    labels = torch.tensor([0, 1, 1, 0])
    logits = {"T": one_hot_logits([0, 1, 1, 0], 2), "a": one_hot_logits([1, 1, 1, 0], 2),
              "b": one_hot_logits([0, 0, 0, 0], 2)}
    table = metrics.gap_table(logits, labels, teacher="T")
    assert table.headers[-2:] == ["a − T", "b − T"]
    assert table.rows[-1] == ["all", 4, 0, 1, 2, 1, 2]
    only_a = metrics.gap_table(logits, labels, teacher="T", students=["a"])
    assert only_a.rows[-1] == ["all", 4, 0, 1, 1]
    with pytest.raises(ValueError, match="teacher"):
        metrics.gap_table(logits, labels, teacher="nobody")


def test_gap_table_of_the_teacher_alone():
    labels = torch.tensor([0, 1, 1, 2])
    table = metrics.gap_table({"T": one_hot_logits([0, 0, 1, 2], 3)}, labels, teacher="T")
    assert table.headers == ["class", "n", "T errors"]
    assert table.rows == [["0", 1, 0], ["1", 2, 1], ["2", 1, 0], ["all", 4, 1]]


def test_gap_closed_arithmetic():
    assert metrics.gap_closed(10, 20, 15) == pytest.approx(0.5)
    assert metrics.gap_closed(10, 20, 10) == pytest.approx(1.0)
    assert metrics.gap_closed(10, 20, 20) == pytest.approx(0.0)
    assert metrics.gap_closed(10, 20, 25) == pytest.approx(-0.5)  # distillation made it worse
    assert metrics.gap_closed(74, 146, 74 + 72 * 0.25) == pytest.approx(0.75)
    assert math.isnan(metrics.gap_closed(10, 10, 12))


# --------------------------------------------------------- predict, evaluate


def test_predict_matches_the_model_and_restores_its_mode(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    x = torch.randn(23, 1, 4, 4, generator=gen)
    model.train()
    out = metrics.predict(model, x, batch_size=5)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-6)  # eval mode was used: no dropout
    ds = torch.utils.data.TensorDataset(x, torch.zeros(23, dtype=torch.long))
    assert torch.allclose(metrics.predict(model, ds), out, atol=1e-6)
    assert not out.requires_grad


def test_evaluate_reports_consistent_numbers(tiny_val):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    result = metrics.evaluate(model, tiny_val)
    logits = metrics.predict(model, tiny_val)
    labels = tiny_val.tensors[1]
    assert result["n"] == len(tiny_val)
    assert result["errors"] == metrics.error_count(logits, labels)
    assert result["accuracy"] == pytest.approx(1 - result["errors"] / len(tiny_val))
    assert result["ece"] == pytest.approx(
        metrics.expected_calibration_error(torch.softmax(logits, -1), labels), abs=1e-7)


# ------------------------------------------------------------------ dark-knowledge views


def test_entropy_known_values():
    entropy = metrics.entropy
    assert float(entropy(torch.full((8,), 1 / 8))) == pytest.approx(math.log(8), rel=1e-6)
    assert float(entropy(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(0.0)
    p = torch.tensor([[0.5, 0.25, 0.25]])
    assert float(entropy(p)) == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))


def test_class_similarity_averages_soft_targets_per_true_class():
    class_similarity = metrics.class_similarity
    logits = torch.tensor([[2.0, 0.0, 1.0], [4.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    m = class_similarity(logits, labels, 2.0)
    p = torch.softmax(logits / 2.0, -1)
    assert m.shape == (3, 3)
    assert torch.allclose(m[0], (p[0] + p[1]) / 2)
    assert torch.allclose(m[1], p[2])
    assert torch.equal(m[2], torch.zeros(3))  # no example of class 2


def test_soft_gradient_norms_show_the_t_squared_effect(gen):
    soft_gradient_norms = metrics.soft_gradient_norms
    s, t = torch.randn(16, 10, generator=gen), torch.randn(16, 10, generator=gen)
    out = soft_gradient_norms(s, t, [10.0, 20.0, 40.0])
    assert out["temperature"] == [10.0, 20.0, 40.0]
    with_t2, without = out["with T²"], out["without T²"]
    assert max(with_t2) / min(with_t2) < 1.05
    assert without[0] / without[1] == pytest.approx(4.0, rel=0.05)
    # per example the gradient is (q - p) / T
    q, p = torch.softmax(s / 10.0, -1), torch.softmax(t / 10.0, -1)
    assert without[0] == pytest.approx(float(((q - p) / 10.0).norm(dim=-1).mean()), rel=1e-4)


def test_class_bias_effect_and_choice():
    class_bias_effect = metrics.class_bias_effect
    choose_class_bias = metrics.choose_class_bias
    labels = torch.tensor([3, 3, 3, 1, 2])
    logits = torch.tensor([[0.0, 5.0, 0.0, 4.0],   # a 3 that lost to 1 by 1.0
                           [0.0, 5.0, 0.0, 2.0],   # a 3 that lost to 1 by 3.0
                           [0.0, 0.0, 0.0, 5.0],
                           [0.0, 5.0, 0.0, 0.0],
                           [0.0, 0.0, 5.0, 0.0]])
    base = class_bias_effect(logits, labels, 3, 0.0)
    assert base == {"bias": 0.0, "errors": 2, "class_correct": 1, "class_total": 3}
    assert class_bias_effect(logits, labels, 3, 1.5)["class_correct"] == 2
    assert class_bias_effect(logits, labels, 3, 3.5)["errors"] == 0
    assert class_bias_effect(logits, labels, 3, 100.0)["errors"] == 2  # everything becomes a 3
    assert choose_class_bias(logits, labels, 3, [0.0, 1.5, 3.5, 100.0]) == 3.5


def test_table_formats_tiny_numbers_by_their_size_not_as_zero():
    t = Table(["x"], [[0.0], [1.23456], [3e-6], [float("nan")]], digits=3)
    assert [line.strip() for line in str(t).splitlines()[2:]] == ["0.000", "1.235", "3.0e-06", "-"]
    assert "3.0e-06" in t._repr_html_()


# ------------------------------------------------------ bad inputs of the chapter-01 helpers

BAD_CLASS_INPUTS = {   # call -> what the message must name
    "class_similarity label too big": (lambda: metrics.class_similarity(LOGITS, torch.tensor([0, 1, 2, 3]), 2.0),
                                       r"\[0, 3\)"),
    "class_similarity negative label": (lambda: metrics.class_similarity(LOGITS, torch.tensor([0, -1, 2, 1]), 2.0),
                                        r"\[0, 3\)"),
    "class_similarity float labels": (lambda: metrics.class_similarity(LOGITS, LABELS.float(), 2.0), "integer"),
    "per_class_errors label too big": (lambda: metrics.per_class_errors(LOGITS, torch.tensor([0, 1, 2, 3])),
                                       r"\[0, 3\)"),
    "per_class_errors bool labels": (lambda: metrics.per_class_errors(LOGITS, LABELS > 0), "integer"),
    "confusion_pairs top 0": (lambda: metrics.confusion_pairs(LOGITS, LABELS, 0), "top"),
    "entropy of logits": (lambda: metrics.entropy(LOGITS - 3.0), "softmax"),
    "entropy of no classes": (lambda: metrics.entropy(torch.zeros(4, 0)), "at least one class"),
    "confusable_pairs not square": (lambda: metrics.confusable_pairs(torch.rand(3, 2)), "square"),
    "confusable_pairs top 0": (lambda: metrics.confusable_pairs(torch.rand(3, 3), 0), "top"),
    "ambiguous_examples 1-D": (lambda: metrics.ambiguous_examples(LOGITS[0], 2), r"\(N, C\)"),
    "ambiguous_examples k 0": (lambda: metrics.ambiguous_examples(LOGITS, 0), "k must"),
    "class_bias_effect class 3 of 3": (lambda: metrics.class_bias_effect(LOGITS, LABELS, 3, 1.0), "cls"),
    "class_bias_effect negative class": (lambda: metrics.class_bias_effect(LOGITS, LABELS, -1, 1.0), "cls"),
    "class_bias_effect NaN bias": (lambda: metrics.class_bias_effect(LOGITS, LABELS, 1, float("nan")), "finite"),
    "choose_class_bias no candidates": (lambda: metrics.choose_class_bias(LOGITS, LABELS, 1, []), "candidates"),
    "choose_class_bias class out of range": (lambda: metrics.choose_class_bias(LOGITS, LABELS, 7, [0.0]), "cls"),
}


@pytest.mark.parametrize("case", list(BAD_CLASS_INPUTS))
def test_class_helpers_refuse_bad_inputs_naming_the_problem(case):
    call, message = BAD_CLASS_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_versus_states_both_means_the_change_and_the_noise_verdict():
    a, b = {"mean": 84.0, "std": 3.0}, {"mean": 140.3, "std": 1.5}
    assert metrics.versus(a, b) == "84.0 vs 140.3 (-40%; beyond two std, 6.0)"
    assert metrics.versus({"mean": 138.0, "std": 3.0}, b) == "138.0 vs 140.3 (-2%; inside two std, 6.0)"
