"""A damaged copy of a *shipped* checkpoint is caught, with the command that re-creates it.

tests/test_checkpoints.py damages checkpoints the tests make; here the real files in
data/models/ are copied, the copy truncated (an interrupted download or copy), and loaded by its
shipped short name, as a notebook does: the error must name ``kdlab prepare --only NAME``.
"""
from __future__ import annotations

import shutil

import pytest

from kdlab_lib import checkpoints, config, models

SHIPPED = sorted(p.name for p in config.MODELS_DIR.iterdir() if (p / "card.json").exists()) \
    if config.MODELS_DIR.exists() else []


def test_there_are_shipped_checkpoints():
    assert "mnist" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_copy_of_a_shipped_checkpoint_names_the_remake_command(name, keep, tmp_path, monkeypatch):
    copy = tmp_path / "models"
    shutil.copytree(config.MODELS_DIR / name, copy / name)
    weights = copy / name / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    monkeypatch.setattr(config, "MODELS_DIR", copy)
    short = next((k for k, v in models.SHIPPED.items() if v == name), name)
    with pytest.raises(checkpoints.CorruptCheckpointError, match=f"kdlab prepare --only {name}"):
        models.load_teacher(short if short in models.SHIPPED else copy / name, device="cpu")
