"""Chapter 04, self-distillation: born-again generations, label corruption and the ensemble."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from kdlab_lib import exercises, metrics, train
from kdlab_lib.chapters import ch04_self_distillation as ch04


def test_corrupt_labels_changes_exactly_the_share_and_is_seeded():
    labels = torch.arange(1000) % 10
    noisy, flipped = ch04.corrupt_labels(labels, 0.3, seed=7)
    assert int(flipped.sum()) == 300
    assert int((noisy != labels).sum()) == 300          # every chosen label really changes ...
    assert torch.equal(noisy != labels, flipped)         # ... and no other one does
    assert torch.equal(labels, torch.arange(1000) % 10)  # the input is untouched
    assert int(noisy.min()) >= 0 and int(noisy.max()) <= 9
    again, _ = ch04.corrupt_labels(labels, 0.3, seed=7)
    other, _ = ch04.corrupt_labels(labels, 0.3, seed=8)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    assert int((ch04.corrupt_labels(labels, 0.0)[0] != labels).sum()) == 0
    with pytest.raises(ValueError, match="share"):
        ch04.corrupt_labels(labels, 1.5)


def test_ensemble_is_the_mean_of_probabilities(gen):
    logits = [torch.randn(5, 10, generator=gen) * 3 for _ in range(3)]
    expected = (logits[0].softmax(-1) + logits[1].softmax(-1) + logits[2].softmax(-1)) / 3
    assert torch.allclose(ch04.ensemble_probs(logits), expected)
    assert not torch.allclose(ch04.ensemble_probs(logits), torch.stack(logits).mean(0).softmax(-1))
    with pytest.raises(ValueError):
        ch04.ensemble_probs([])
    with pytest.raises(ValueError):
        ch04.ensemble_probs([torch.zeros(2, 10), torch.zeros(3, 10)])


def _tiny_mnist(gen, n=64):
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def test_generation_k_learns_from_generation_k_minus_1(gen, monkeypatch):
    data, test = _tiny_mnist(gen), _tiny_mnist(gen, 32)
    seen = []
    real_distill = train.distill

    def spy(student, teacher, train_set, cfg=None, **kw):
        seen.append(teacher.clone())
        return real_distill(student, teacher, train_set, cfg, **kw)

    monkeypatch.setattr(ch04.train, "distill", spy)
    b = ch04.budget(hidden=(16,), epochs=1, generations=3, batch_size=32)
    r = ch04.born_again(b, seed=0, progress=False, data=data, test=test)
    assert len(seen) == 2   # generation 0 learns from labels, 1 and 2 from their predecessor
    for k, targets in enumerate(seen, start=1):
        previous = metrics.predict(r["models"][k - 1], data)
        assert torch.allclose(targets, previous)
        if k >= 2:   # and not from generation 0 (the original teacher)
            assert not torch.allclose(targets, metrics.predict(r["models"][0], data))
    rows = r["rows"]
    assert [row["generation"] for row in rows] == [0, 1, 2]
    assert rows[0]["agreement_with_previous"] is None
    assert rows[1]["agreement_with_previous"] == pytest.approx(
        metrics.agreement(r["test_logits"][1], r["test_logits"][0]))
    ens = ch04.ensemble_probs(r["test_logits"][:2])
    assert rows[1]["ensemble_errors"] == metrics.error_count(ens, test.tensors[1])
    assert rows[0]["ensemble_errors"] == rows[0]["test_errors"]


def test_noisy_run_trains_on_corrupted_labels_but_tests_on_clean_ones(gen, monkeypatch):
    data, test = _tiny_mnist(gen, 100), _tiny_mnist(gen, 32)
    seen = []
    real_fit = train.fit

    def spy(model, train_set, cfg=None, **kw):
        seen.append(train_set.tensors[1].clone())
        return real_fit(model, train_set, cfg, **kw)

    monkeypatch.setattr(ch04.train, "fit", spy)
    b = ch04.budget(hidden=(16,), epochs=1, generations=2, batch_size=32)
    r = ch04.born_again(b, seed=3, noise=0.3, progress=False, data=data, test=test)
    assert r["flipped"] == 30
    assert int((seen[0] != data.tensors[1]).sum()) == 30
    assert "flipped_true_label_pct" in r["rows"][0]


@pytest.mark.parametrize("generations, noise, message", [(0, 0.0, "generations"), (-1, 0.0, "generations"),
                                                        (2, 1.5, "share"), (2, -0.1, "share")])
def test_born_again_refuses_bad_settings_before_training(gen, monkeypatch, generations, noise, message):
    data = _tiny_mnist(gen, 20)
    monkeypatch.setattr(ch04, "train_generation", lambda *a, **k: pytest.fail("trained before checking the settings"))
    with pytest.raises(ValueError, match=message):
        ch04.born_again(ch04.budget(hidden=(16,), epochs=1, generations=generations), noise=noise, progress=False,
                      data=data, test=data)


def test_lm_generations_distil_from_the_previous_one(monkeypatch):
    from kdlab_lib import models, train_text
    from kdlab_lib.chapters import ch03_gpt2 as ch03
    vocab = models.gpt2_lm(64, layers=1, hidden=16, heads=2, max_len=16, eos_token_id=0)
    b = ch03.budget(layers=1, hidden=16, heads=2, block=16, steps=2, batch_size=2)
    blocks = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    teachers = []
    real = train_text.distill_clm
    monkeypatch.setattr(ch04.train_text, "distill_clm",
                        lambda s, t, *a, **k: (teachers.append(t), real(s, t, *a, **k))[1])
    r = ch04.born_again_lm(vocab, blocks, blocks[:4], b, generations=3, progress=False)
    assert teachers == r["models"][:2] and teachers[0] is not teachers[1]
    rows = r["rows"]
    assert rows[0]["perplexity"] == pytest.approx(metrics.perplexity(r["models"][0], blocks[:4]), rel=1e-4)
    assert rows[0]["ensemble_perplexity"] == pytest.approx(rows[0]["perplexity"], rel=1e-4)
    assert rows[0]["agreement_with_previous"] is None and 0 <= rows[2]["agreement_with_previous"] <= 1


def test_ensemble_checker_both_ways():
    assert exercises.check_ensemble(ch04.ensemble_probs)
    assert exercises.check_ensemble(lambda ls: torch.stack([x.softmax(-1) for x in ls]).mean(0))
    wrong = exercises.check_ensemble(lambda ls: torch.stack(ls).mean(0).softmax(-1))
    assert not wrong and "average the probabilities" in str(wrong)
    assert "raw logits" in str(exercises.check_ensemble(lambda ls: torch.stack(ls).mean(0)))
    assert "None" in str(exercises.check_ensemble(lambda ls: None))


def test_corrupt_labels_checker_both_ways():
    assert exercises.check_corrupt_labels(lambda y, s, seed: ch04.corrupt_labels(y, s, seed)[0])

    def any_class(labels, share, seed):   # naive: a fresh class from all ten may equal the old one
        g = torch.Generator().manual_seed(seed)
        out = labels.clone()
        pick = torch.randperm(len(labels), generator=g)[:round(share * len(labels))]
        out[pick] = torch.randint(0, 10, (len(pick),), generator=g)
        return out

    wrong = exercises.check_corrupt_labels(any_class)
    assert not wrong and "offset in 1..9" in str(wrong)
    assert "no label changed" in str(exercises.check_corrupt_labels(lambda y, s, seed: y.clone()))

    def in_place(labels, share, seed):
        labels[:round(share * len(labels))] += 1
        return labels

    assert "changed the labels it was given" in str(exercises.check_corrupt_labels(in_place))


def test_noise_panel_matches_the_library(gen):
    from kdlab_lib import widgets
    data, test = _tiny_mnist(gen, 80), _tiny_mnist(gen, 40)
    b = ch04.budget(hidden=(16,), epochs=1, batch_size=32)
    panel = widgets.NoisePanel(b, data, test, seed=2)
    assert panel.result["last"] is None
    panel.noise.value = 0.5
    panel.button.click()
    last = panel.result["last"]
    same = ch04.born_again(ch04.budget(hidden=(16,), epochs=1, batch_size=32, generations=2), 2, noise=0.5,
                         progress=False, data=data, test=test)["rows"]
    assert last["noise"] == 0.5
    assert (last["generation 0"], last["generation 1"], last["ensemble"]) == \
        (same[0]["test_errors"], same[1]["test_errors"], same[1]["ensemble_errors"])
    assert f'{last["generation 1"]}' in panel.readout.value
    panel.noise.value = 0.0
    panel.button.click()
    assert [r["noise"] for r in panel.result["runs"]] == [0.0, 0.5]


def test_self_verdict_uses_the_two_std_rule():
    def summary(g0, g2):
        return {"per_generation": [{"test_errors": metrics.mean_std(g0)}, {"test_errors": metrics.mean_std([0])},
                                   {"test_errors": metrics.mean_std(g2)}]}
    clear = ch04.self_verdict(summary([100, 104, 108], [90, 90, 90]))           # 14 fewer, 2 std = 8
    assert "generation 2 makes 14.0 fewer" in clear and "is larger than the noise" in clear
    noise = ch04.self_verdict(summary([100, 104, 108], [96, 98, 100]))          # 6 fewer, 2 std = 8
    assert "not larger than the noise" in noise
