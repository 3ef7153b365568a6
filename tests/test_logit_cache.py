"""The offline top-k logit cache: write/read round trip, storage per token, corruption refused."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from kdlab_lib import logit_cache, losses


def tiny_teacher(vocab=4096, hidden=16, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=256, n_embd=hidden, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def blocks(n, block, vocab, seed=0):
    return torch.randint(0, vocab, (n, block), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    teacher = tiny_teacher()
    x, held = blocks(10, 12, 4096), blocks(3, 12, 4096, seed=1)
    out = tmp_path_factory.mktemp("cache") / "c"
    manifest = logit_cache.write_cache(teacher, x, out, k=5, batch_size=3, shard_blocks=4, chunk_size=7,
                                       heldout=held, command="kdlab cache-logits --teacher T --out c",
                                       info={"teacher": "tiny"})
    return teacher, x, held, out, manifest


def test_round_trip_gives_back_the_teachers_top_k_logits(written):
    teacher, x, held, out, manifest = written
    cache = logit_cache.LogitCache(out)
    assert (len(cache), cache.k, cache.vocab_size, cache.block) == (10, 5, 4096, 12)
    assert [s["blocks"] for s in manifest["shards"]] == [4, 4, 2] and manifest["teacher"] == "tiny"
    with torch.no_grad():
        want_v, want_i = teacher(input_ids=x).logits[:, :-1].topk(5, dim=-1)     # (10, 11, 5)
    got = [cache.shard(i) for i in range(3)]
    ids = torch.cat([g["input_ids"] for g in got])
    vals = torch.cat([g["topk_values"] for g in got])
    idx = torch.cat([g["topk_indices"] for g in got])
    assert torch.equal(ids, x) and ids.dtype == torch.int64
    assert vals.dtype == torch.bfloat16 and vals.shape == (10, 11, 5)
    # bf16 of the exact logits, shifted so the largest is 0 (a softmax does not see the shift)
    assert torch.equal(vals, (want_v - want_v[..., :1]).to(torch.bfloat16))
    assert torch.equal(idx, want_i)
    s = torch.randn(10, 11, 4096)
    assert torch.allclose(losses.topk_kd_loss(s, vals, idx, 2.0), losses.topk_kd_loss(s, want_v, want_i, 2.0),
                          rtol=1e-2)
    assert torch.equal(cache.heldout(), held)
    cache.verify()


def test_files_use_the_smallest_dtypes_that_fit():
    assert logit_cache.index_dtype(4096) == torch.uint16 and logit_cache.index_dtype(50_257) == torch.uint16
    assert logit_cache.index_dtype(65_537) == torch.int32


def test_stored_dtypes_on_disk(written):
    from safetensors import safe_open
    *_, out, manifest = written
    with safe_open(str(out / manifest["shards"][0]["file"]), "pt") as f:
        assert f.get_slice("topk_shifted").get_dtype() == "BF16"
        assert f.get_slice("topk_shifted").get_shape() == [4, 11, 4]                 # k - 1 values stored
        assert f.get_slice("topk_indices").get_dtype() == "U16"
        assert f.get_slice("input_ids").get_dtype() == "U16"


@pytest.mark.slow
@pytest.mark.parametrize("vocab, block", [(4096, 64), (50_257, 256)])
def test_storage_per_token_at_k_100_is_at_most_400_bytes(tmp_path, vocab, block):
    teacher = tiny_teacher(vocab=vocab, hidden=8)
    m = logit_cache.write_cache(teacher, blocks(1024 // block * 4, block, vocab), tmp_path / "c", k=100,
                                batch_size=4, shard_blocks=64)
    assert m["bytes_per_token"] <= 400
    assert m["bytes_per_token"] == pytest.approx(logit_cache.bytes_per_token(vocab, 100, block), rel=0.01)
    assert logit_cache.bytes_per_token(vocab, 100, 1024) < 400
    assert "storage per token" in logit_cache.summary(m)


def test_batches_visit_every_block_once_per_epoch(written):
    *_, x, held, out, manifest = written
    cache = logit_cache.LogitCache(out)
    it = cache.batches(5, seed=3)
    seen = torch.cat([next(it)[0] for _ in range(2)])                             # 2 x 5 = one epoch
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, x.tolist()))
    ids, vals, idx = next(it)
    assert ids.shape == (5, 12) and vals.shape == idx.shape == (5, 11, 5)
    with pytest.raises(ValueError, match="batch_size"):
        next(cache.batches(11))


def test_a_corrupted_shard_is_refused_naming_the_file_and_the_command(written, tmp_path):
    import shutil
    *_, out, manifest = written
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF                                                               # one flipped byte
    shard.write_bytes(bytes(data))
    cache = logit_cache.LogitCache(copy)
    cache.shard(0)                                                                 # the others still load
    with pytest.raises(logit_cache.CorruptCacheError) as err:
        cache.shard(1)
    msg = str(err.value)
    assert str(shard) in msg and "corrupt" in msg and "`kdlab cache-logits --teacher T --out c`" in msg
    with pytest.raises(logit_cache.CorruptCacheError, match="shard-00001"):
        cache.verify()
    shard.unlink()
    with pytest.raises(logit_cache.CorruptCacheError, match="missing or unreadable.*kdlab cache-logits"):
        logit_cache.LogitCache(copy).shard(1)


def test_missing_or_foreign_manifest_is_refused(tmp_path, written):
    with pytest.raises(logit_cache.CorruptCacheError, match="manifest.json is missing.*kdlab cache-logits"):
        logit_cache.LogitCache(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(logit_cache.CorruptCacheError, match="not a kdlab logit cache"):
        logit_cache.LogitCache(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(logit_cache.CorruptCacheError, match="unreadable"):
        logit_cache.LogitCache(tmp_path)


def test_k_of_one_stores_no_values(tmp_path):
    teacher = tiny_teacher(vocab=64)
    x = blocks(2, 8, 64)
    logit_cache.write_cache(teacher, x, tmp_path / "c", k=1)
    t = logit_cache.LogitCache(tmp_path / "c").shard(0)
    with torch.no_grad():
        top = teacher(input_ids=x).logits[:, :-1].argmax(-1, keepdim=True)
    assert torch.equal(t["topk_indices"], top) and torch.equal(t["topk_values"], torch.zeros(2, 7, 1).bfloat16())


def test_bad_settings_and_an_existing_cache_are_refused(written, tmp_path):
    teacher, x, held, out, manifest = written
    with pytest.raises(ValueError, match="already exists"):
        logit_cache.write_cache(teacher, x, out, k=5)
    with pytest.raises(ValueError, match="k must be"):
        logit_cache.write_cache(teacher, x, tmp_path / "a", k=0)
    with pytest.raises(ValueError, match="token ids"):
        logit_cache.write_cache(teacher, x + 5000, tmp_path / "b", k=5)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a-*"))
