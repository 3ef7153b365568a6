"""`kdlab distill`: argument checks, a one-process run, and a two-process Accelerate run on the CPU."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from kdlab_lib import accelerate_distill, models
from kdlab_lib.tools import cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory, distill_setup):
    return distill_setup(tmp_path_factory.mktemp("distill"))


def args_for(root, teacher, student, corpus, out, **extra):
    argv = ["distill", "--teacher", str(teacher), "--student", str(student), "--text", str(corpus),
            "--out", str(out), "--steps", "4", "--batch-size", "4", "--block", "32", "--log-every", "2", "--cpu"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


@pytest.mark.slow
def test_one_process_run_writes_student_checkpoints_and_metrics(setup, capsys):
    root, teacher, student, corpus = setup
    out = root / "one"
    assert cli.main(args_for(root, teacher, student, corpus, out, save_every=2, temperature=2.0, alpha=0.5)) == 0
    assert "held-out perplexity" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 1 and metrics["replicas_identical"]
    assert [r["step"] for r in metrics["history"]] == [2, 4]
    for r in metrics["history"]:   # each term logged, and the total is their mix
        assert r["loss"] == pytest.approx(0.5 * r["hard"] + 0.5 * r["soft"], rel=1e-5)
    assert all(v > 1 and v == v for v in metrics["val_perplexity"].values())
    trained = models.load_teacher(out / "student", device="cpu")
    start = models.load_teacher(student, device="cpu")
    assert not torch.equal(trained.lm_head.weight, start.lm_head.weight)
    assert (out / "checkpoint-2" / "config.json").exists() and (out / "student" / "tokenizer.json").exists()
    assert accelerate_distill.state_sha256(trained) == metrics["replica_sha256"][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_the_same_model(setup):
    root, teacher, student, corpus = setup
    out = root / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "kdlab_lib.cli",
           *args_for(root, teacher, student, corpus, out, loss="jsd")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert len(metrics["replica_sha256"]) == 2 and metrics["replicas_identical"]
    trained = models.load_teacher(out / "student", device="cpu")
    assert accelerate_distill.state_sha256(trained) == metrics["replica_sha256"][0]
    assert not torch.equal(trained.lm_head.weight, models.load_teacher(student, device="cpu").lm_head.weight)


@pytest.mark.parametrize("extra, message", [
    ({"alpha": 1.5}, "--alpha"),
    ({"temperature": 0}, "--temperature"),
    ({"top_k": 0}, "--top-k"),
    ({"steps": 0}, "--steps"),
    ({"val_fraction": 1.0}, "--val-fraction"),
])
def test_bad_settings_are_refused_before_loading(setup, tmp_path, extra, message):
    root, teacher, student, corpus = setup
    with pytest.raises(ValueError, match=message):
        cli.main(args_for(root, teacher, student, corpus, tmp_path, **extra))


def test_missing_text_and_offline_hub_names_are_refused(setup, tmp_path):
    root, teacher, student, corpus = setup
    with pytest.raises(ValueError, match="no such file"):
        cli.main(args_for(root, teacher, student, tmp_path / "nope.txt", tmp_path))
    with pytest.raises(ValueError, match="online=True"):
        cli.main(args_for(root, "gpt2-large", student, corpus, tmp_path))
    with pytest.raises(ValueError, match="--online"):
        cli.main(["distill", "--teacher", str(teacher), "--student", str(student), "--out", str(tmp_path),
                  "--hub-text", "karpathy/tiny_shakespeare:input.txt"])


def test_models_that_cannot_be_distilled_together_are_refused(setup, tmp_path, tiny_gpt2):
    root, teacher, student, corpus = setup
    other = tiny_gpt2(tmp_path / "other", 1, 16, vocab=1000)
    with pytest.raises(ValueError, match="share a vocabulary"):
        cli.main(args_for(root, teacher, other, corpus, tmp_path / "o"))
    bert = tmp_path / "bert"
    models.bert_mlm(4096, layers=1, hidden=16, heads=2, intermediate=32, max_len=64).save_pretrained(bert)
    with pytest.raises(ValueError, match="not a causal language model"):
        cli.main(args_for(root, teacher, bert, corpus, tmp_path / "b"))
    with pytest.raises(ValueError, match="batch-size"):
        cli.main(args_for(root, teacher, student, corpus, tmp_path / "c", batch_size=10000))
