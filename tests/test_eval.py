"""Chapter 06, evaluating a student: calibration bins and ECE (by hand and against torchmetrics),
temperature scaling, the per-category gap table on cases with a known answer, the gap report and
its widget against the library, robustness, out-of-distribution data and ``kdlab bench eval``."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from kdlab_lib import config, datasets, exercises, losses, metrics, widgets
from kdlab_lib.chapters import ch06_evaluation as ch06
from kdlab_lib.tools import cli

# --------------------------------------------------------------- ECE and its bins

def test_confidence_bins_hand_computed():
    # confidences 0.6 (right), 0.7 (wrong), 0.9 (right), 1.0 (right), five bins of width 0.2:
    # (0.4, 0.6]: acc 1, conf 0.6 -> 1/4 * 0.4; (0.6, 0.8]: acc 0, conf 0.7 -> 1/4 * 0.7;
    # (0.8, 1.0]: acc 1, conf 0.95 -> 2/4 * 0.05. ECE = 0.1 + 0.175 + 0.025 = 0.3
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.1, 0.9], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    b = metrics.reliability_bins(probs, labels, n_bins=5)
    assert b["count"].tolist() == [0, 0, 1, 1, 2]
    assert b["ece"] == pytest.approx(0.3, abs=1e-6)
    assert b["accuracy"][2:].tolist() == [1.0, 0.0, 1.0]
    assert b["confidence"][4].item() == pytest.approx(0.95)
    assert math.isnan(b["accuracy"][0]) and math.isnan(b["confidence"][1])
    assert b["edges"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert metrics.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_confidence_bins_match_torchmetrics_and_the_lab_ece(gen, n_bins):
    logits = torch.randn(2000, 10, generator=gen) * 2.5
    labels = torch.randint(0, 10, (2000,), generator=gen)
    probs = logits.softmax(-1)
    ref = MulticlassCalibrationError(num_classes=10, n_bins=n_bins, norm="l1")(probs, labels)
    bins = metrics.reliability_bins(probs, labels, n_bins)
    assert bins["ece"] == pytest.approx(float(ref), abs=1e-6)
    assert bins["ece"] == pytest.approx(metrics.expected_calibration_error(probs, labels, n_bins), abs=1e-7)
    assert int(bins["count"].sum()) == 2000
    conf, pred = probs.max(-1)   # the streamed form a language model uses gives the same number
    assert metrics.confidence_bins(conf, pred == labels, n_bins)["ece"] == pytest.approx(bins["ece"], abs=1e-7)


def test_confidence_bins_reject_bad_input():
    with pytest.raises(ValueError, match="n_bins"):
        metrics.confidence_bins(torch.tensor([0.5]), torch.tensor([1.0]), 0)
    with pytest.raises(ValueError, match="probabilities"):
        metrics.confidence_bins(torch.tensor([2.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="one shape"):
        metrics.confidence_bins(torch.tensor([0.5, 0.6]), torch.tensor([1.0]))


def test_temperature_scaling_recovers_a_known_temperature(gen):
    logits = torch.randn(20_000, 5, generator=gen) * 3
    labels = torch.multinomial((logits / 2.0).softmax(-1), 1, generator=gen)[:, 0]  # labels drawn at T = 2
    t = metrics.fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.05)
    assert metrics.ece_at(logits, labels, t) < metrics.ece_at(logits, labels, 1.0)   # over-confident at T = 1
    assert metrics.accuracy(logits / t, labels) == metrics.accuracy(logits, labels)


# -------------------------------------------------------------------- gap table

def test_category_gap_on_a_constructed_case():
    # 3 categories of 4 examples. Teacher wrong once in category 1; the student wrong twice in
    # category 0, three times in 1, never in 2: gaps 0.5, 0.5 and 0, sorted (stable) 0, 1, 2.
    cats = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    teacher = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0.])
    student = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0.])
    scratch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0.])
    t = metrics.category_gap({"teacher": teacher, "student": student}, cats, teacher="teacher",
                             names=["a", "b", "c"])
    assert t.headers == ["category", "n", "teacher error rate", "student error rate", "gap student"]
    assert [r[0] for r in t.rows] == ["a", "b", "c", "all"]
    assert t.column("gap student") == pytest.approx([0.5, 0.5, 0.0, 4 / 12])
    assert t.column("n") == [4, 4, 4, 12]
    assert t.column("teacher error rate")[1] == pytest.approx(0.25)
    two = metrics.category_gap({"teacher": teacher, "student": student, "scratch": scratch}, cats,
                               teacher="teacher", names=["a", "b", "c"])
    assert [r[0] for r in two.rows] == ["b", "a", "c", "all"]          # scratch's 0.75 in b is the largest
    assert two.column("gap scratch") == pytest.approx([0.75, 0.0, 0.25, 4 / 12])
    # higher is better (accuracy): the gap is teacher - student, still positive where the student falls short
    acc = metrics.category_gap({"teacher": 1 - teacher, "student": 1 - student}, cats, teacher="teacher",
                               names=["a", "b", "c"], lower_is_better=False, measure="accuracy")
    assert acc.column("gap student") == pytest.approx([0.5, 0.5, 0.0, 4 / 12])
    few = metrics.category_gap({"teacher": teacher[:9], "student": student[:9]}, cats[:9], teacher="teacher",
                               min_count=2)
    assert [r[0] for r in few.rows] == ["0", "1", "all"] and few.rows[-1][1] == 9   # category 2 has 1 example


def test_category_gap_rejects_bad_input():
    cats = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="teacher"):
        metrics.category_gap({"a": torch.zeros(2)}, cats, teacher="nobody")
    with pytest.raises(ValueError, match="students"):
        metrics.category_gap({"a": torch.zeros(2)}, cats, teacher="a", students=["b"])
    with pytest.raises(ValueError, match="categories"):
        metrics.category_gap({"a": torch.zeros(3), "b": torch.zeros(3)}, cats, teacher="a")
    with pytest.raises(ValueError, match="names"):
        metrics.category_gap({"a": torch.zeros(2), "b": torch.zeros(2)}, cats, teacher="a", names=["x"])


def _bundle(gen, n=60):
    """A constructed MNIST-like bundle: the student is wrong on every 7 the teacher gets right."""
    labels = torch.arange(n) % 10
    teacher = torch.nn.functional.one_hot(labels, 10).float() * 5
    student = teacher.clone()
    sevens = (labels == 7).nonzero(as_tuple=True)[0]
    student[sevens] = torch.nn.functional.one_hot(torch.full((len(sevens),), 1), 10).float() * 5
    student[0] = torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 5     # and one 0
    logits = {"teacher": teacher, "distilled": student}
    pred = {k: v.argmax(-1) for k, v in logits.items()}
    return ch06.Bundle(family="toy digits", kind="images", metric="test errors", measure="error rate",
                       lower_is_better=True, models=list(logits),
                       per_example={k: (p != labels).float() for k, p in pred.items()},
                       headline={k: int((p != labels).sum()) for k, p in pred.items()},
                       categories={"digit class": (labels, [str(c) for c in range(10)])},
                       images=torch.randn(n, 1, 28, 28, generator=gen), labels={"test": labels},
                       logits={"test": logits}, pred=pred)


def test_gap_report_names_the_worst_class_with_its_examples(gen):
    b = _bundle(gen)
    r = ch06.gap_report(b, "teacher", "distilled", top=3)
    assert r["headline"] == {"teacher": 0, "distilled": 7}
    assert [w["category"] for w in r["worst"]] == ["7", "0"]      # only positive gaps are listed
    assert r["worst"][0]["gap"] == pytest.approx(1.0) and r["worst"][1]["gap"] == pytest.approx(1 / 6)
    assert [e["index"] for e in r["worst"][0]["examples"]] == [7, 17, 27, 37, 47, 57][:6]
    assert all(e["student"] == 1 and e["teacher"] == 7 for e in r["worst"][0]["examples"])
    assert r["largest_gap"]["category"] == "7"
    with pytest.raises(ValueError, match="different"):
        ch06.gap_report(b, "teacher", "teacher")
    with pytest.raises(ValueError, match="among"):
        ch06.gap_report(b, "teacher", "nobody")


def test_gap_report_widget_shows_the_library_values_and_lists_missing_families(gen):
    b, other = _bundle(gen), _bundle(gen, 40)
    other.family = "other"
    status = {"toy digits": {"available": True}, "other": {"available": True},
              "sentiment (BERT)": {"available": False, "command": "kdlab prepare --only bert-tiny",
                                   "message": "unavailable: create it with `kdlab prepare --only bert-tiny`"}}
    panel = widgets.GapReport({"toy digits": b, "other": other}, status)
    want = ch06.gap_report(b, "teacher", "distilled")
    assert panel.result["table"].rows == want["table"].rows and panel.result["headline"] == want["headline"]
    assert '<span class="kd-worst">7</span>' in panel.readout.value
    panel.teacher.value, panel.student.value = "distilled", "teacher"        # the pair the other way round
    assert panel.result["table"].rows == ch06.gap_report(b, "distilled", "teacher")["table"].rows
    panel.family.value = "other"
    assert panel.result["family"] == "other" and panel.result["teacher"] == "teacher"
    assert panel.result["table"].rows == ch06.gap_report(other, "teacher", "distilled")["table"].rows
    panel.family.value = "sentiment (BERT)"
    assert panel.result["available"] is False
    assert "kdlab prepare --only bert-tiny" in panel.readout.value
    assert "(unavailable)" in dict((v, k) for k, v in panel.family.options)["sentiment (BERT)"]


def test_family_status_names_the_command_for_a_missing_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "MODELS_DIR", tmp_path)
    status = ch06.family_status()
    assert all(not s["available"] for s in status.values())
    assert status["sentiment (BERT)"]["command"] == "kdlab prepare --only bert-tiny"
    assert "kdlab prepare --only mnist" in status["MNIST digits"]["message"]


# ------------------------------------------------------------ fidelity and OOD

def test_ood_auroc_and_disagreements():
    assert metrics.ood_auroc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2, 0.3])) == 1.0
    assert metrics.ood_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])) == 0.0
    assert metrics.ood_auroc(torch.tensor([0.5, 0.5]), torch.tensor([0.5])) == 0.5
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(50, generator=g).round(decimals=1), torch.rand(40, generator=g).round(decimals=1)
    brute = float(((a[:, None] > b[None]).float() + 0.5 * (a[:, None] == b[None]).float()).mean())
    assert metrics.ood_auroc(a, b) == pytest.approx(brute)
    labels = torch.tensor([0, 1, 2, 0])
    teacher = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2]), 3).float()
    student = torch.nn.functional.one_hot(torch.tensor([0, 2, 2, 1]), 3).float()
    d = metrics.disagreements(student, teacher, labels)
    assert d == {"n": 4, "disagree": 3, "student right": 1, "teacher right": 1, "neither": 1}


def test_perturb_is_seeded_and_zero_is_identity(tiny_val):
    x = tiny_val.tensors[0][:8]
    assert ch06.perturb(x) is x
    one = ch06.perturb(x, noise=0.3, seed=1)
    assert torch.equal(one, ch06.perturb(x, noise=0.3, seed=1))
    assert not torch.equal(one, ch06.perturb(x, noise=0.3, seed=2))
    px = datasets.to_pixels(ch06.perturb(x, shift=2))
    assert torch.allclose(px[:, :, 2:, 2:], datasets.to_pixels(x)[:, :, :-2, :-2], atol=1e-5)
    assert ch06.perturb(x, angle=30).shape == x.shape
    with pytest.raises(ValueError):
        ch06.perturb(x, noise=-1)


def test_robustness_panel_matches_the_library(tiny_val):
    from kdlab_lib import models
    torch.manual_seed(0)
    named = {"a": models.mlp((16,)).eval(), "b": models.mlp((8,)).eval()}
    panel = widgets.RobustnessPanel(named, tiny_val, seed=3)
    panel.noise.value = 0.3
    panel.angle.value = 20.0
    x = ch06.perturb(tiny_val.tensors[0], noise=0.3, angle=20.0, seed=3)
    want = {k: metrics.error_count(metrics.predict(m, x), tiny_val.tensors[1]) for k, m in named.items()}
    assert panel.result["errors"] == want
    assert f'<span class="kd-errors-a">{want["a"]}</span>' in panel.readout.value
    r = ch06.robustness(named, tiny_val, "angle", [0.0, 20.0], seed=0)
    assert r["errors"]["a"][0] == metrics.error_count(metrics.predict(named["a"], tiny_val), tiny_val.tensors[1])


@pytest.mark.needs(datasets.fashion_mnist_available(),
                   f"Debian's dataset-fashion-mnist is not installed (`{datasets.INSTALL_FASHION}`)")
def test_fashion_mnist_loads_normalised_like_mnist():
    d = datasets.load_fashion_mnist("test")
    x, y = d.tensors
    assert x.shape == (10_000, 1, 28, 28) and y.shape == (10_000,) and set(y.unique().tolist()) == set(range(10))
    assert float(datasets.to_pixels(x).min()) == 0.0 and float(datasets.to_pixels(x).max()) == 1.0


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_DIR", tmp_path)
    datasets._fashion_tensors.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
            datasets.load_fashion_mnist("test")
        assert not datasets.fashion_mnist_available()
    finally:
        datasets._fashion_tensors.cache_clear()


# -------------------------------------------------------------- language models

def test_lm_stats_match_the_library(gen):
    from kdlab_lib import models
    torch.manual_seed(0)
    t = models.gpt2_lm(64, layers=1, hidden=16, heads=2, max_len=16, eos_token_id=0).eval()
    s = models.gpt2_lm(64, layers=1, hidden=8, heads=2, max_len=16, eos_token_id=0).eval()
    blocks = torch.randint(0, 64, (5, 16), generator=gen)
    st = ch06.lm_stats({"teacher": t, "s": s}, blocks, temperatures={"s": 2.0}, batch_size=2)
    ref = metrics.token_nll(s, blocks)
    assert torch.equal(st["target"], ref["target"])
    assert torch.allclose(st["s"]["nll"], ref["nll"], atol=1e-5)
    with torch.no_grad():
        ls, lt = s(input_ids=blocks).logits[:, :-1], t(input_ids=blocks).logits[:, :-1]
    assert float(st["s"]["kl"].mean()) == pytest.approx(float(losses.forward_kl(ls, lt)), rel=1e-4)
    assert float(st["s"]["agree"].mean()) == pytest.approx(metrics.agreement(ls.flatten(0, 1), lt.flatten(0, 1)))
    assert torch.allclose(st["s"]["conf_T"], (ls / 2.0).softmax(-1).max(-1).values.flatten(), atol=1e-6)
    assert "kl" not in st["teacher"]


def test_token_types_and_frequency_buckets():
    from kdlab_lib import text
    tok = text.load_tokenizer("bpe")
    types, names = ch06.token_types(tok)
    kind = lambda s: names[int(types[tok.encode(s)[0]])]
    assert kind(" the") == "word start" and kind(" KING") == "capitalised word start"
    assert kind(",") == "punctuation" and kind("\n") == "line break / space"
    ranks = torch.tensor([0, 150, 5000, 99])
    buckets, bnames = ch06.frequency_buckets(ranks)
    assert buckets.tolist() == [0, 1, 2, 0] and len(bnames) == 3


# ----------------------------------------------------------------------- bench

@pytest.mark.slow
def test_bench_eval_quick_writes_a_file_shaped_like_the_shipped_one(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert cli.main(["bench", "eval", "--out", str(out), "--seeds", "1"]) == 0
    quick = json.loads(out.read_text())
    assert quick["quick"] is True and quick["command"] == "kdlab bench eval"
    fams = quick["families"]
    mnist = fams["MNIST digits"]["pairs"]["distilled"]["per_seed"][0]
    for key in ("test_errors", "ece", "ece_scaled", "fitted_temperature", "agreement", "largest_class_gap"):
        assert key in mnist
    assert "perplexity" in fams["GPT-2 (Shakespeare)"]["pairs"]["scratch"]["summary"]
    if not fams["sentiment (BERT)"].get("available"):
        assert fams["sentiment (BERT)"]["command"] == "kdlab prepare --only bert-tiny"
    assert "results written to" in capsys.readouterr().out
    shipped = config.RESULTS_DIR / "eval.json"
    if shipped.exists():
        real = json.loads(shipped.read_text())
        assert set(real) == set(quick) and real["quick"] is False
        for name, fam in real["families"].items():
            if "pairs" in fam and "pairs" in fams.get(name, {}):
                assert set(fam["pairs"]) == set(fams[name]["pairs"])


# ----------------------------------------------------------------- exercises

def test_ece_checker_both_ways():
    assert exercises.check_ece(lambda p, y, n: metrics.expected_calibration_error(p, y, n))
    assert "None" in str(exercises.check_ece(lambda p, y, n: None))

    def unweighted(probs, labels, n_bins):   # the mean gap over non-empty bins, not weighted by their size
        b = metrics.reliability_bins(probs, labels, n_bins)
        keep = b["count"] > 0
        return float((b["accuracy"][keep] - b["confidence"][keep]).abs().mean())

    wrong = exercises.check_ece(unweighted)
    assert not wrong and "weight" in str(wrong)

    def mean_gap(probs, labels, n_bins):     # one bin: |accuracy - mean confidence| over everything
        conf, pred = probs.max(-1)
        return float(abs((pred == labels).float().mean() - conf.mean()))

    assert "bins" in str(exercises.check_ece(mean_gap))


def test_temperature_checker_both_ways():
    assert exercises.check_fitted_temperature(metrics.fit_temperature)
    wrong = exercises.check_fitted_temperature(lambda z, y: 1.0)
    assert not wrong and "1.0" in str(wrong)
    assert "divide" in str(exercises.check_fitted_temperature(lambda z, y: 1 / metrics.fit_temperature(z, y)))
    assert "None" in str(exercises.check_fitted_temperature(lambda z, y: None))


def test_sentiment_family_on_a_tiny_random_bert():
    """The sentiment bundle and its gap report, with a random 2-layer BERT standing in for the shipped
    teacher (which may not be shipped yet): shapes, categories and the report's examples."""
    from kdlab_lib import models, text
    from kdlab_lib.chapters import ch02_distilbert as ch02
    tok = text.load_tokenizer("wordpiece")
    torch.manual_seed(0)
    mlm = models.bert_mlm(tok.vocab_size, layers=2, hidden=32, heads=2, intermediate=64, max_len=64)
    b = ch02.budget(student_layers=(0,), n_sentiment=32, sentiment_steps=1, n_eval=40, max_len=24)
    named = ch06.sentiment_students(mlm, tok, b, progress=False)
    assert set(named) == {"teacher", "fine-tuned", "distilled"}
    bundle = ch06.sentiment_bundle(named, tok, b)
    assert bundle.logits["test"]["teacher"].shape == (40, 2) and len(bundle.texts) == 40
    assert set(bundle.categories) == {"class", "snippet length"}
    r = ch06.gap_report(bundle, "teacher", "distilled", by="snippet length")
    assert r["table"].rows[-1][1] == 40
    for w in r["worst"]:
        for e in w["examples"]:
            assert e["student"] != e["label"] == e["teacher"] and e["text"] == bundle.texts[e["index"]]
    assert set(ch06.calibration(bundle)["rows"]) == set(named)


def test_bench_sentiment_family_runs_when_a_bert_teacher_is_there(monkeypatch):
    """``bench_eval.sentiment_family`` with a tiny random BERT in place of the shipped teacher."""
    from kdlab_lib import models, text
    from kdlab_lib.chapters import ch02_distilbert as ch02
    from kdlab_lib.tools.bench import ch06 as bench_eval
    tok = text.load_tokenizer("wordpiece")
    torch.manual_seed(0)
    mlm = models.bert_mlm(tok.vocab_size, layers=2, hidden=32, heads=2, intermediate=64, max_len=64)
    mlm.card = {"sha256": "test"}
    monkeypatch.setattr(ch02, "load", lambda: (mlm, tok))
    tiny = ch02.budget(student_layers=(0,), n_sentiment=32, sentiment_steps=1, n_eval=40, max_len=24)
    monkeypatch.setattr(ch02, "budget", lambda **kw: tiny)
    fam = bench_eval.sentiment_family((0,), progress=False)
    assert set(fam["pairs"]) == {"fine-tuned", "distilled"} and fam["test_snippets"] == 40
    row = fam["pairs"]["distilled"]["per_seed"][0]
    assert {"test_errors", "ece", "ece_scaled", "agreement", "largest_gap_by_class"} <= set(row)
    headers, rows = ch06.bench_pairs_table(fam)
    assert [r[0] for r in rows] == ["teacher", "fine-tuned", "distilled"] and len(headers) == len(rows[0])


def test_release_training_digits_empties_the_cache_and_mnist_still_loads():
    datasets.load_mnist("val")
    ch06.release_training_digits()
    assert datasets._mnist_tensors.cache_info().currsize == 0
    assert len(datasets.load_mnist("test")) == 10_000


def test_bench_calibration_verdict_reads_means_against_the_spread():
    s = lambda m, sd: {"mean": m, "std": sd}
    fam = {"pairs": {"scratch": {"summary": {"ece": s(0.010, 0.001), "ece_scaled": s(0.004, 0.001)}},
                     "distilled": {"summary": {"ece": s(0.006, 0.001), "ece_scaled": s(0.0045, 0.001)}}}}
    v = ch06.bench_calibration_verdict(fam)
    assert "distilled 0.0060 vs scratch 0.0100, lower, by more than two standard deviations over seeds (0.0020)" in v
    assert "distilled 0.0045 vs scratch 0.0040, higher, by no more than" in v
    fam["pairs"]["distilled"]["summary"]["ece"] = s(0.0085, 0.001)   # 1.5 std lower: noise by the 2-std rule
    assert "distilled 0.0085 vs scratch 0.0100, lower, by no more than" in ch06.bench_calibration_verdict(fam)
    fam["pairs"]["distilled"]["summary"]["ece"] = s(0.006, 0.001)
    fam["pairs"]["fine-tuned"] = fam["pairs"].pop("scratch")   # the sentiment family's baseline
    assert "distilled 0.0060 vs fine-tuned 0.0100, lower" in ch06.bench_calibration_verdict(fam)
    del fam["pairs"]["fine-tuned"]
    assert "no distilled student and baseline" in ch06.bench_calibration_verdict(fam)
