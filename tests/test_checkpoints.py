"""Checkpoints: safetensors + JSON card, atomic writes, refusal of corrupt files, no pickle."""
from __future__ import annotations

import hashlib
import inspect
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from torch import nn

from kdlab_lib import checkpoints
from kdlab_lib.core.checkpoints import CorruptCheckpointError


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


CARD = {"config": {"arch": "mlp", "hidden": [4]}, "recipe": {"epochs": 1, "seed": 0},
        "metrics": {"test_errors": 123}}


@pytest.fixture
def saved(tmp_path):
    model = small_model()
    path = checkpoints.save(model, tmp_path / "tiny-net", CARD)
    return model, path


def test_round_trip_keeps_values_and_card(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["card.json", "model.safetensors"]
    state, card = checkpoints.load(path)
    reference = model.state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert state[key].dtype == value.dtype
        assert torch.equal(state[key], value), key
    for key, value in CARD.items():
        assert card[key] == value
    assert card["name"] == "tiny-net"
    weights = (path / "model.safetensors").read_bytes()
    assert card["sha256"] == hashlib.sha256(weights).hexdigest()
    assert card["bytes"] == len(weights)
    assert json.loads((path / "card.json").read_text()) == card


def test_save_accepts_a_state_dict_and_does_not_change_the_callers_card(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(7)}
    card = {"config": {}}
    checkpoints.save(state, tmp_path / "sd", card)
    assert card == {"config": {}}  # the caller's dict is not filled in behind its back
    loaded, _ = checkpoints.load(tmp_path / "sd")
    assert torch.equal(loaded["w"], state["w"]) and int(loaded["step"]) == 7


def test_fp16_saving_converts_only_floating_point_tensors(tmp_path):
    model = small_model()
    path = checkpoints.save(model, tmp_path / "half", CARD, dtype=torch.float16)
    state, _ = checkpoints.load(path)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert state[key].dtype == torch.float16, key
            assert torch.equal(state[key], value.half()), key
        else:  # BatchNorm's num_batches_tracked stays an integer
            assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    full = checkpoints.save(model, tmp_path / "full", CARD)
    assert (path / "model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size


def test_weights_are_a_real_safetensors_file(saved):
    model, path = saved
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())


def test_atomic_write_leaves_no_temporary_directories(tmp_path):
    for seed in range(3):  # the second and third saves replace the first
        checkpoints.save(small_model(seed), tmp_path / "net", CARD)
    assert [p.name for p in tmp_path.iterdir()] == ["net"]


def test_overwriting_an_existing_checkpoint(tmp_path):
    path = tmp_path / "net"
    checkpoints.save(small_model(0), path, {**CARD, "metrics": {"v": 1}})
    second = small_model(1)
    checkpoints.save(second, path, {**CARD, "metrics": {"v": 2}})
    state, card = checkpoints.load(path)
    assert card["metrics"] == {"v": 2}
    for key, value in second.state_dict().items():
        assert torch.equal(state[key], value), key
    assert sorted(p.name for p in path.iterdir()) == ["card.json", "model.safetensors"]


def test_overwrite_replaces_the_whole_directory(tmp_path):
    path = checkpoints.save(small_model(0), tmp_path / "net", CARD)
    (path / "stale.bin").write_bytes(b"left over from an older format")
    checkpoints.save(small_model(1), path, CARD)
    assert sorted(p.name for p in path.iterdir()) == ["card.json", "model.safetensors"]


def test_a_failed_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    old = small_model(0)
    path = checkpoints.save(old, tmp_path / "net", CARD)

    def crash(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:  # half a file, then the process "dies"
            f.write(b"\x00" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(small_model(1), path, CARD)
    monkeypatch.undo()
    state, _ = checkpoints.load(path)  # still the old, complete checkpoint
    for key, value in old.state_dict().items():
        assert torch.equal(state[key], value), key
    assert [p.name for p in tmp_path.iterdir()] == ["net"]  # and no temporary directory


def test_save_creates_missing_parent_directories(tmp_path):
    path = checkpoints.save(small_model(), tmp_path / "a" / "b" / "net", CARD)
    assert checkpoints.load(path).card["name"] == "net"


def _damage(path, how: str) -> None:
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # flip one bit near the end, inside the tensor data
        data[-3] ^= 0x01
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "byte-flipped"])
def test_damaged_weights_are_refused_with_the_remake_command(saved, how):
    _, path = saved
    _damage(path, how)
    with pytest.raises(CorruptCheckpointError, match="kdlab prepare --only tiny-net") as info:
        checkpoints.load(path)
    assert "SHA-256" in str(info.value)


def test_remake_hint_uses_the_card_name_and_its_remake_command(tmp_path):
    path = checkpoints.save(small_model(), tmp_path / "dir-name", {**CARD, "name": "mnist"})
    _damage(path, "byte-flipped")
    with pytest.raises(CorruptCheckpointError, match="kdlab prepare --only mnist"):
        checkpoints.load(path)
    path = checkpoints.save(small_model(), tmp_path / "other", {**CARD, "remake": "make special"})
    _damage(path, "truncated")
    with pytest.raises(CorruptCheckpointError, match="make special"):
        checkpoints.load(path)


def test_corrupt_checkpoint_error_is_a_value_error():
    assert issubclass(CorruptCheckpointError, ValueError)


def test_missing_card_is_refused(saved):
    _, path = saved
    (path / "card.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="kdlab prepare --only tiny-net"):
        checkpoints.load(path)


@pytest.mark.parametrize("content", [
    b"{not json",                            # broken JSON
    b"\xff\xfe\x00garbage",                   # not even text
    b"",                                     # empty
    b"[1, 2, 3]",                            # JSON, but not a card
    b'{"config": {}}',                       # a card without a checksum
    b'{"config": {}, "sha256": 12345}',      # a checksum that is not a string
])
def test_unreadable_card_is_refused(saved, content):
    _, path = saved
    (path / "card.json").write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match="kdlab prepare --only tiny-net"):
        checkpoints.load(path)


def test_missing_weights_are_refused(saved):
    _, path = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(CorruptCheckpointError, match="kdlab prepare --only tiny-net"):
        checkpoints.load(path)


def test_missing_directory_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoints.load(tmp_path / "nowhere")


def test_loading_never_uses_pickle(saved, monkeypatch):
    model, path = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was used to load a checkpoint")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    state, _ = checkpoints.load(path)
    assert torch.equal(state["0.weight"], model.state_dict()["0.weight"])
    source = inspect.getsource(checkpoints)
    assert "pickle" not in source.replace("no pickle", "")
    assert "torch.load" not in source


def test_read_card_returns_the_card_without_touching_the_weights(saved):
    _, path = saved
    _damage(path, "truncated")
    card = checkpoints.read_card(path)  # the card alone is still fine
    assert card["config"] == CARD["config"]


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=500, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    checkpoints.save(model, tmp_path / "gpt", {"config": {}}, dtype=torch.float16)
    state, card = checkpoints.load(tmp_path / "gpt")
    assert card["aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    # stored once: the file is smaller than two copies of the 500 x 16 fp16 embedding
    raw = (tmp_path / "gpt" / checkpoints.WEIGHTS).stat().st_size
    total = sum(v.numel() * 2 for k, v in model.state_dict().items() if k != "lm_head.weight")
    assert raw < total + 500 * 16 * 2
