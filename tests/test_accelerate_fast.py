"""The fast path of `kdlab distill` on the CPU: --chunked and --pad-vocab give the plain run's numbers,
and `kdlab cache-logits` + `kdlab distill --from-cache` train a student end to end from a logit cache."""
import json

import pytest
import torch
import transformers

from kdlab_lib import fast_kd, logit_cache, models
from kdlab_lib.tools import cli

VOCAB = 4100   # >= the lab's 4,096-token BPE and not a multiple of 64, so --pad-vocab pads (to 4,160)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, distill_setup):
    return distill_setup(tmp_path_factory.mktemp("fast"), vocab=VOCAB)


def distill(setup, out, *flags, **extra):
    root, teacher, student, corpus = setup
    argv = ["distill", "--teacher", str(teacher), "--student", str(student), "--text", str(corpus), "--out", str(out),
            "--steps", "4", "--batch-size", "4", "--block", "32", "--log-every", "2", "--cpu", *flags]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert cli.main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("extra", [{"loss": "forward", "alpha": 0.5}, {"loss": "jsd", "temperature": 2.0},
                                   {"loss": "forward", "top_k": 5}])
def test_chunked_and_padded_runs_follow_the_plain_run(setup, tmp_path, extra):
    plain = distill(setup, tmp_path / "plain", **extra)
    fast = distill(setup, tmp_path / "fast", "--chunked", "--pad-vocab", chunk_size=20, **extra)
    assert fast["mode"] == "online, chunked" and fast["settings"]["pad_vocab"]
    for a, b in zip(plain["history"], fast["history"]):
        for key in ("loss", "soft", "hard"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    a = models.load_teacher(tmp_path / "plain" / "student", device="cpu")
    b = models.load_teacher(tmp_path / "fast" / "student", device="cpu")
    assert b.config.vocab_size == VOCAB and b.lm_head.weight.shape == (VOCAB, 16)   # saved without the padding
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-4), name
    assert fast["val_perplexity"]["student"] == pytest.approx(plain["val_perplexity"]["student"], rel=1e-3)


def test_pad_vocab_adds_zero_rows_that_never_get_probability():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    assert fast_kd.pad_vocab(model) == 100 and model.lm_head.weight.shape == (128, 8)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()   # still tied
    assert torch.count_nonzero(model.lm_head.weight[100:]) == 0
    x = torch.randint(0, 100, (2, 9))
    logits = fast_kd.true_logits(model(input_ids=x).logits, 100)
    assert logits.shape[-1] == 100                                                       # padding cut before softmax
    back = fast_kd.unpadded_copy(model, 100)
    assert back.config.vocab_size == 100 and torch.equal(back(input_ids=x).logits, logits)


@pytest.mark.slow
def test_cache_logits_then_distill_from_cache_end_to_end(setup, tmp_path, capsys):
    root, teacher, student, corpus = setup
    cache = tmp_path / "cache"
    assert cli.main(["cache-logits", "--teacher", str(teacher), "--text", str(corpus), "--out", str(cache),
                     "--k", "100", "--block", "32", "--batch-size", "8", "--shard-blocks", "16", "--cpu",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "storage per token:" in printed and "--from-cache" in printed
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["k"] == 100 and manifest["bytes_per_token"] <= 400 and len(manifest["shards"]) > 1
    assert manifest["command"].startswith("kdlab cache-logits --teacher") and (cache / "tokenizer").is_dir()
    out = tmp_path / "run"
    for flags in ([], ["--chunked", "--pad-vocab"]):
        argv = ["distill", "--from-cache", str(cache), "--student", str(student), "--out", str(out / str(len(flags))),
                "--steps", "4", "--batch-size", "4", "--log-every", "2", "--cpu", "--temperature", "2",
                "--alpha", "0.2", *flags]
        assert cli.main(argv) == 0
        metrics = json.loads((out / str(len(flags)) / "metrics.json").read_text())
        assert metrics["mode"] == "from cache, " + ("chunked" if flags else "full logits")
        assert metrics["teacher"] == str(teacher) and metrics["settings"]["block"] == 32
        assert metrics["val_perplexity"]["teacher"] == manifest["teacher_val_perplexity"]
        assert metrics["val_perplexity"]["student"] > 1
        for r in metrics["history"]:
            assert r["loss"] == pytest.approx(0.2 * r["hard"] + 0.8 * r["soft"], rel=1e-5)
        trained = models.load_teacher(out / str(len(flags)) / "student", device="cpu")
        assert trained.config.vocab_size == VOCAB and (out / str(len(flags)) / "student" / "tokenizer.json").exists()
        assert not torch.equal(trained.lm_head.weight, models.load_teacher(student, device="cpu").lm_head.weight)
    a, b = (json.loads((out / n / "metrics.json").read_text())["history"] for n in ("0", "2"))
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-4)        # same batches, same loss, chunked or not


def test_from_cache_refuses_a_corrupt_shard_and_wrong_settings(setup, tmp_path, tiny_gpt2):
    root, teacher, student, corpus = setup
    cache = tmp_path / "cache"
    cli.main(["cache-logits", "--teacher", str(teacher), "--text", str(corpus), "--out", str(cache), "--k", "4",
              "--block", "32", "--shard-blocks", "1000", "--cpu", "--no-progress"])
    base = ["distill", "--from-cache", str(cache), "--student", str(student), "--out", str(tmp_path / "o"),
            "--steps", "2", "--batch-size", "4", "--cpu"]
    with pytest.raises(ValueError, match="drop --teacher"):
        cli.main(base + ["--teacher", str(teacher)])
    with pytest.raises(ValueError, match="--loss reverse"):
        cli.main(base + ["--loss", "reverse"])
    with pytest.raises(ValueError, match="top 4 logits only"):
        cli.main(base + ["--top-k", "5"])
    with pytest.raises(ValueError, match="blocks of 32 tokens"):
        cli.main(base + ["--block", "64"])
    other = tiny_gpt2(tmp_path / "other", 1, 16, vocab=4200)
    with pytest.raises(ValueError, match="share a vocabulary"):
        cli.main(["distill", "--from-cache", str(cache), "--student", str(other), "--out", str(tmp_path / "p"),
                  "--cpu"])
    shard = cache / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(logit_cache.CorruptCacheError) as err:
        cli.main(base)
    assert str(shard) in str(err.value) and "kdlab cache-logits --teacher" in str(err.value)


def test_fast_path_settings_are_checked(setup, tmp_path):
    root, teacher, student, corpus = setup
    with pytest.raises(ValueError, match="--chunk-size"):
        distill(setup, tmp_path, "--chunked", chunk_size=0)
    with pytest.raises(ValueError, match="drop --top-k"):
        distill(setup, tmp_path, loss="reverse", top_k=5)
    with pytest.raises(ValueError, match="give the teacher"):
        cli.main(["distill", "--student", str(student), "--text", str(corpus), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="no such directory"):
        cli.main(["distill", "--from-cache", str(tmp_path / "nope"), "--student", str(student), "--out", str(tmp_path)])
