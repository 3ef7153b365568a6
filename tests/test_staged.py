"""Chapter 05 (chapters.ch05_staged): teaching-assistant chains, magnitude pruning in the cascade,
the capacity-gap sweeps, the pruning exercise and ``kdlab bench staged``."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from kdlab_lib import exercises, metrics, models, train
from kdlab_lib.chapters import ch05_staged as ch05

TINY = dict(epochs=1, n_train=600, n_test=500, n_val=300)


@pytest.fixture(scope="module")
def teacher():
    return models.load_teacher("mnist", device="cpu")


def test_the_chain_distils_each_stage_from_the_stage_before(teacher, monkeypatch):
    b = ch05.budget(**TINY)
    data = ch05.transfer_set(b)
    seen = []
    real = train.distill

    def spy(student, target, *args, **kw):
        seen.append(target.clone() if isinstance(target, torch.Tensor) else target)
        return real(student, target, *args, **kw)

    monkeypatch.setattr(train, "distill", spy)
    t_targets = metrics.predict(teacher, data)
    chain = ch05.distill_chain(t_targets, [30, 10], data, b, temperature=4.0)
    assistant, student = chain["models"]
    assert torch.equal(seen[0], t_targets) and chain["temperatures"] == [4.0, 4.0]
    assistant_out = metrics.predict(assistant, data)
    assert torch.equal(seen[1], assistant_out), "the student must match the assistant's logits"
    assert not torch.allclose(seen[1], t_targets), "... not the teacher's"
    assert student[-1].out_features == 10 and student[1].out_features == 10
    # with T chosen per link: every try of the student's link matches the assistant that was kept
    seen.clear()
    auto = ch05.distill_chain(t_targets, [30, 10], data, b)
    n = len(b.temperatures)
    assert len(seen) == 2 * n and all(torch.equal(t, t_targets) for t in seen[:n])
    kept = metrics.predict(auto["models"][0], data)
    assert all(torch.equal(t, kept) for t in seen[n:])
    assert all(t in b.temperatures for t in auto["temperatures"])


def test_teaching_assistant_compares_staged_with_direct(teacher):
    b = ch05.budget(**TINY)
    r = ch05.teaching_assistant(teacher, b, (30, 10))
    assert set(r["errors"]) == {"teacher", "direct", "staged", "scratch"}
    assert [a["width"] for a in r["assistants"]] == [30]
    assert all(0 <= v <= b.n_test for v in r["errors"].values())
    gap = ch05.per_class_gap(r["logits"], r["labels"])
    assert all(len(v) == 10 and sum(v) == r["errors"][k] for k, v in gap.items())
    with pytest.raises(ValueError):
        ch05.teaching_assistant(teacher, b, ())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_zeroes_exactly_the_share_and_it_stays_zero(scope):
    torch.manual_seed(0)
    b = ch05.budget(**TINY)
    m = ch05.student(30)
    layers = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    total = sum(l.weight.numel() for l in layers)
    ch05.prune_by_magnitude(m, 0.3, scope)
    if scope == "global":
        assert sum(int((l.weight == 0).sum()) for l in layers) == round(0.3 * total)
        pruned = torch.cat([l.weight_orig[l.weight_mask == 0].abs() for l in layers])
        kept = torch.cat([l.weight_orig[l.weight_mask == 1].abs() for l in layers])
        assert pruned.max() <= kept.min(), "magnitude pruning removes the smallest |w| first"
    else:
        for l in layers:
            assert int((l.weight == 0).sum()) == round(0.3 * l.weight.numel())
    zero_before = [(l.weight == 0).clone() for l in layers]
    ch05.train_student(0, ch05.transfer_set(b), b, model=m, teacher=torch.randn(b.n_train, 10))  # a distillation round
    ch05.make_permanent(m)
    assert not any(hasattr(l, "weight_orig") for l in layers), "prune.remove made it permanent"
    for l, z in zip(layers, zero_before):
        assert torch.all(l.weight[z] == 0), "pruned weights stay zero through training"
    n_zero = sum(int((l.weight == 0).sum()) for l in layers)
    # a second round prunes 30 % of what is still nonzero; the old zeros stay
    ch05.prune_by_magnitude(m, 0.3, scope)
    ch05.make_permanent(m)
    for l, z in zip(layers, zero_before):
        assert torch.all(l.weight[z] == 0)
    if scope == "global":
        assert sum(int((l.weight == 0).sum()) for l in layers) == n_zero + round(0.3 * (total - n_zero))
    with pytest.raises(ValueError):
        ch05.prune_by_magnitude(m, 1.0)


def test_cascade_makes_ever_smaller_models(teacher):
    b = ch05.budget(**TINY)
    start = ch05.student(30)
    r = ch05.cascade(teacher, start, b, share=0.5, rounds=2)
    rows = r["rows"]
    assert [x["round"] for x in rows] == [0, 1, 2]
    assert rows[0]["nonzero"] == models.n_params(start)
    assert rows[0]["nonzero"] > rows[1]["nonzero"] > rows[2]["nonzero"]
    assert rows[1]["sparsity"] == pytest.approx(0.5, abs=1e-4) and rows[2]["sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert ch05.nonzero_params(r["models"][2]) == rows[2]["nonzero"]
    assert ch05.weight_sparsity(start) == 0.0, "the start model is left as it was"


def test_capacity_gap_functions_return_their_structure(teacher):
    b = ch05.budget(**TINY)
    s = ch05.capacity_gap_students(teacher, b, widths=(10, 30), seeds=(0, 1))
    assert s["widths"] == [10, 30] and set(s["scratch"]) == set(s["distilled"]) == set(s["gain"]) == {"10", "30"}
    assert all(len(v) == 2 for v in s["scratch"].values())
    assert s["gain"]["10"] == pytest.approx(sum(s["scratch"]["10"]) / 2 - sum(s["distilled"]["10"]) / 2)
    assert s["params"]["30"] == models.n_params(ch05.student(30))
    t = ch05.capacity_gap_teachers(b, widths=(30,), student_width=10, extra_teachers={"shipped CNN": teacher})
    assert [row["name"] for row in t["teachers"]] == ["MLP 30-30", "shipped CNN"]   # by size
    assert set(t["student"]) == {"MLP 30-30", "shipped CNN"} and len(t["scratch"]) == 1


def test_temperature_is_chosen_per_pair_on_validation_digits(teacher):
    b = ch05.budget(**TINY)
    data, val = ch05.transfer_set(b), ch05.val_set(b)
    targets = metrics.predict(teacher, data)
    pick = ch05.distill_best_t(10, targets, data, val, b, seed=0, temperatures=(4, 1, 2))
    assert sorted(pick["val_errors"]) == [1.0, 2.0, 4.0]
    best = min(pick["val_errors"].values())
    assert pick["val_errors"][pick["temperature"]] == best
    assert pick["temperature"] == min(t for t, e in pick["val_errors"].items() if e == best)   # ties: lower T
    again = ch05.train_student(10, data, b, 0, targets, temperature=pick["temperature"])   # the kept model is
    assert ch05.errors(again, val) == best                                                 # that T's student
    # the validation digits are not test digits
    assert not torch.equal(val.tensors[0][:5], ch05.test_set(b).tensors[0][:5])
    with pytest.raises(ValueError, match="temperatures"):
        ch05.distill_best_t(10, targets, data, val, b, temperatures=(0, 2))
    s = ch05.capacity_gap_students(teacher, b, widths=(10,), seeds=(0, 1), targets=targets)
    t = s["temperature"]["10"]
    assert s["distilled"]["10"][0] == s["by_temperature"]["10"][f"{t:g}"] and len(s["distilled"]["10"]) == 2


BAD_SETTINGS = {   # call(teacher, budget) -> what the message must name
    "cascade share 1": (lambda t, b: ch05.cascade(t, models.mlp((10, 10)), b, share=1.0), "share"),
    "cascade share 0": (lambda t, b: ch05.cascade(t, models.mlp((10, 10)), b, share=0.0), "share"),
    "cascade share negative": (lambda t, b: ch05.cascade(t, models.mlp((10, 10)), b, share=-0.2), "share"),
    "cascade rounds 0": (lambda t, b: ch05.cascade(t, models.mlp((10, 10)), b, rounds=0), "rounds"),
    "cascade rounds fractional": (lambda t, b: ch05.cascade(t, models.mlp((10, 10)), b, rounds=1.5), "rounds"),
    "cascade scope": (lambda t, b: ch05.cascade(t, models.mlp((10, 10)), b, scope="all"), "scope"),
    "cascade teach": (lambda t, b: ch05.cascade(t, models.mlp((10, 10)), b, teach="teacher"), "teach"),
    "chain empty": (lambda t, b: ch05.teaching_assistant(t, b, ()), "at least one width"),
    "chain negative width": (lambda t, b: ch05.teaching_assistant(t, b, (100, -10)), "positive"),
    "chain fractional width": (lambda t, b: ch05.teaching_assistant(t, b, (100, 2.5)), "whole"),
    "chain not widths": (lambda t, b: ch05.teaching_assistant(t, b, ("ten",)), "widths"),
    "distill_chain empty": (lambda t, b: ch05.distill_chain(torch.zeros(600, 10), [], ch05.transfer_set(b), b),
                            "at least one width"),
    "distill_chain zero width": (lambda t, b: ch05.distill_chain(torch.zeros(600, 10), [30, 0], ch05.transfer_set(b),
                                                                 b),
                                 "positive"),
    "students no widths": (lambda t, b: ch05.capacity_gap_students(t, b, []), "at least one width"),
    "students no seeds": (lambda t, b: ch05.capacity_gap_students(t, b, [10], seeds=()), "seed"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_settings_are_refused_before_any_training(teacher, case, monkeypatch):
    call, message = BAD_SETTINGS[case]
    monkeypatch.setattr(ch05, "train_student", lambda *a, **k: pytest.fail("trained before checking the settings"))
    with pytest.raises(ValueError, match=message):
        call(teacher, ch05.budget(**TINY))


def test_magnitude_mask_checker_both_ways():
    def right(w, share):
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[w.abs().flatten().argsort()[:round(share * w.numel())]] = False
        return keep.view_as(w)

    def signed(w, share):
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[w.flatten().argsort()[:round(share * w.numel())]] = False
        return keep.view_as(w)

    assert exercises.check_magnitude_mask(right)
    v = exercises.check_magnitude_mask(signed)
    assert not v and "|w|" in v.message
    v = exercises.check_magnitude_mask(lambda w, s: ~right(w, s))
    assert not v and "keep" in v.message
    assert not exercises.check_magnitude_mask(lambda w, s: None)
    assert exercises.check_prediction("capacity-gap", "c")


@pytest.mark.slow
def test_bench_staged_quick_writes_a_file_shaped_like_the_shipped_one(tmp_path, capsys):
    from kdlab_lib import config
    from kdlab_lib.tools import cli
    out = tmp_path / "staged.json"
    assert cli.main(["bench", "staged", "--out", str(out)]) == 0
    quick = json.loads(out.read_text())
    assert quick["quick"] is True and quick["command"] == "kdlab bench staged"
    assert len(quick["teaching_assistant"]["direct"]["values"]) == 3
    shipped = config.RESULTS_DIR / "staged.json"
    if shipped.exists():
        real = json.loads(shipped.read_text())
        assert real["quick"] is False, "the shipped results must come from a classroom run"
        assert quick.keys() == real.keys() and quick["budget"].keys() == real["budget"].keys()
        assert quick["cascade"].keys() == real["cascade"].keys()


# ------------------------------------------------ the GPT-2 family (exercise 5)

@pytest.fixture(scope="module")
def gpt_data():
    from kdlab_lib.chapters import ch05_staged as ch05
    return ch05.gpt2_data()


@pytest.mark.slow
def test_gpt2_chain_distils_the_student_from_the_assistant(gpt_data, monkeypatch):
    from kdlab_lib import train_text
    from kdlab_lib.chapters import ch03_gpt2 as ch03
    from kdlab_lib.chapters import ch05_staged as ch05
    teacher, _, train_blocks, val_blocks, ranks = gpt_data
    seen = []
    real = train_text.distill_clm

    def spy(student, teach, *args, **kw):
        seen.append((student, teach))
        return real(student, teach, *args, **kw)

    monkeypatch.setattr(train_text, "distill_clm", spy)
    cb = ch05.gpt2_budget()
    r = ch05.gpt2_teaching_assistant(teacher, train_blocks, val_blocks, cb, seed=0, ranks=ranks)
    m = r["models"]
    assert seen == [(m["direct"], teacher), (m["assistant"], teacher), (m["staged"], m["assistant"])]
    assert seen[2][1] is not teacher, "the staged student must learn from the assistant, not the teacher"
    x = val_blocks[:2]
    with torch.no_grad():
        assert not torch.allclose(m["assistant"](input_ids=x).logits, teacher(input_ids=x).logits)
    assert m["assistant"].config.n_layer == cb.assistant_layers and m["assistant"].config.n_embd == cb.assistant_hidden
    assert m["staged"].config.n_embd == m["direct"].config.n_embd == m["scratch"].config.n_embd
    assert set(r["perplexity"]) == {"teacher", "assistant", "direct", "staged", "scratch"}
    assert [row[0] for row in r["frequency_gap"]] == [name for _, _, name in ch03.FREQUENCY_BUCKETS]
    # a longer chain: each stage's teacher is the stage before it
    seen.clear()
    stages = [ch05.gpt2_assistant_budget(cb), ch05.gpt2_student_budget(cb)]
    chain = ch05.gpt2_distill_chain(teacher, stages, train_blocks)
    assert [t for _, t in seen] == [teacher, chain[0]] and [s for s, _ in seen] == chain
    with pytest.raises(ValueError):
        ch05.gpt2_distill_chain(teacher, [], train_blocks)


@pytest.mark.slow
def test_bench_staged_gpt2_quick_writes_a_file_shaped_like_the_shipped_one(tmp_path, capsys):
    from kdlab_lib import config
    from kdlab_lib.tools import cli
    out = tmp_path / "staged-gpt2.json"
    assert cli.main(["bench", "staged-gpt2", "--out", str(out)]) == 0
    quick = json.loads(out.read_text())
    assert quick["quick"] is True and quick["command"] == "kdlab bench staged-gpt2"
    assert len(quick["perplexity"]["staged"]["values"]) == 3 and len(quick["per_seed"]) == 3
    assert quick["params"]["teacher"] > quick["params"]["assistant"] > quick["params"]["student"]
    assert len(quick["frequency_gap"]["rows"][0]) == len(quick["frequency_gap"]["columns"])
    shipped = config.RESULTS_DIR / "staged-gpt2.json"
    if shipped.exists():
        real = json.loads(shipped.read_text())
        assert real["quick"] is False, "the shipped results must come from a classroom run"
        assert quick.keys() == real.keys() and quick["budget"].keys() == real["budget"].keys()
        assert quick["perplexity"].keys() == real["perplexity"].keys()
        assert quick["frequency_gap"]["columns"] == real["frequency_gap"]["columns"]
        assert len(real["perplexity"]["staged"]["values"]) >= 3


def test_compare_verdict_uses_the_two_std_rule():
    # 10 lower on average; the noisier run's std is 4 (2 std = 8): a measured difference
    assert "more than two standard deviations over seeds (8.0)" in ch05.compare_verdict(
        "staged", [86, 90, 94], "direct", [100, 100, 100])
    # 10 lower, std 6 (2 std = 12): inside the noise, although one std (6) would have called it real
    v = ch05.compare_verdict("staged", [84, 90, 96], "direct", [100, 100, 100])
    assert "within two standard deviations over seeds (12.0)" in v and "10.0 lower" in v
    assert "one seed" in ch05.compare_verdict("staged", [90], "direct", [100, 101])


def test_live_check_counts_what_its_seeds_measured(teacher):
    check = ch05.live_check(teacher, seeds=(0, 1))
    assert check["seeds"] == [0, 1] and check["widths"] == list(ch05.LIVE_WIDTHS) and len(check["per_seed"]) == 2
    small, hot = str(ch05.LIVE_WIDTHS[0]), f"{max(check['budget']['temperatures']):g}"
    assert check["hot_hurts_smallest"] == sum(r["by_temperature"][small][hot] > r["scratch"][small][0]
                                              for r in check["per_seed"])
    for w in ch05.LIVE_WIDTHS:
        k = str(w)
        assert check["distilled_wins"][k] == sum(
            r["by_temperature"][k][f"{r['temperature'][k]:g}"] < r["scratch"][k][0] for r in check["per_seed"])
    with pytest.raises(ValueError, match="at least one seed"):
        ch05.live_check(teacher, seeds=())


def test_live_check_verdict_reads_the_counts():
    check = {"seeds": [0, 1, 2], "widths": [10, 30], "budget": {"temperatures": [1, 2, 4, 8]}, "command": "kdlab x",
             "hot_hurts_smallest": 3, "distilled_wins": {"10": 1, "30": 2}}
    text = ch05.live_check_verdict(check)
    assert "on 3 of 3 seeds the 10-10 student distilled at T = 8" in text and "10-10 on 1 of 3, 30-30 on 2 of 3" in text


def test_prune_curve_is_pruning_without_retraining(teacher):
    b = ch05.budget(**TINY)
    data, test = ch05.transfer_set(b), ch05.test_set(b)
    model = ch05.train_student(30, data, b, 0, teacher)
    before = [p.detach().clone() for p in model.parameters()]
    rows = ch05.prune_curve(model, test, shares=(0.0, 0.5, 0.9), scope="layer")
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))       # the model is untouched
    assert rows[0]["test_errors"] == ch05.errors(model, test) and rows[0]["layer_zero"] == [0.0, 0.0, 0.0]
    m = ch05.make_permanent(ch05.prune_by_magnitude(copy.deepcopy(model), 0.9, "layer"))
    assert rows[2]["test_errors"] == ch05.errors(m, test) and rows[2]["nonzero"] == ch05.nonzero_params(m)
    assert rows[2]["layer_zero"] == pytest.approx([0.9, 0.9, 0.9], abs=0.01)          # the same share in each layer
    glob = ch05.prune_curve(model, test, shares=(0.9,))[0]
    assert glob["nonzero"] == pytest.approx(rows[2]["nonzero"], abs=3)                # as many zeros in all ...
    assert max(glob["layer_zero"]) > 0.9 > min(glob["layer_zero"])                   # ... spread unevenly


def test_prune_explorer_shows_the_curve_at_the_share_and_scope_picked(teacher):
    from kdlab_lib import widgets
    b = ch05.budget(**TINY)
    data, test = ch05.transfer_set(b), ch05.test_set(b)
    model = ch05.train_student(30, data, b, 0, teacher)
    rows = ch05.cascade(teacher, model, b, share=0.5, rounds=1)["rows"]
    panel = widgets.PruneExplorer(model, test, cascade_rows=rows)
    assert panel.result["share"] == 0.5 and panel.result["scope"] == "global"
    panel.share.value, panel.scope.value = 0.85, "layer"
    want = ch05.prune_curve(model, test, shares=(0.85,), scope="layer")[0]
    assert panel.result["test_errors"] == want["test_errors"] and panel.result["nonzero"] == want["nonzero"]
    assert f'<span class="kd-errors">{want["test_errors"]}</span>' in panel.readout.value and "85%" in \
        panel.readout.value
    assert list(panel.fig.data[-1].y) == [want["test_errors"]] and list(panel.fig.data[-1].x) == [85.0]
    assert list(panel.fig.data[2].y) == [r["test_errors"] for r in rows]              # the cascade's rounds
    assert panel.share.continuous_update                                               # it follows the drag
    with pytest.raises(ValueError, match="share must be one of"):
        widgets.PruneExplorer(model, test, share=0.33)
    with pytest.raises(ValueError, match="scope must be"):
        widgets.PruneExplorer(model, test, scope="rows")
