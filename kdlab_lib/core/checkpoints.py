"""Safetensors checkpoints with a JSON card; atomic writes; integrity checks.

A checkpoint is a directory::

    NAME/
      model.safetensors   the weights (no pickle anywhere)
      card.json           {"name", "config", "recipe", "metrics", "sha256", ...}

``card["sha256"]`` is the SHA-256 of ``model.safetensors``. ``load`` refuses a
checkpoint whose weights do not match it, or whose card is missing or
unreadable, and names the command that re-creates it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from . import store

WEIGHTS = "model.safetensors"
CARD = "card.json"


class Checkpoint(NamedTuple):
    state_dict: dict[str, torch.Tensor]
    card: dict


class CorruptCheckpointError(ValueError):
    """A checkpoint whose weights or card cannot be trusted."""


def remake_hint(path: Path, card: dict | None = None) -> str:
    name = (card or {}).get("name") or Path(path).name
    command = (card or {}).get("remake") or f"kdlab prepare --only {name}"
    return f"re-create it with `{command}`"


def save(model, path, card: dict, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (an ``nn.Module`` or a state dict) and ``card`` to directory ``path``.

    ``dtype`` (e.g. ``torch.float16``) converts floating point weights before
    saving. Tied weights (one tensor under two names) are stored once and listed
    in ``card["aliases"]``. The directory is built beside the target and renamed into place,
    so a reader never sees half a checkpoint.
    """
    path = Path(path)
    state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    tensors, aliases, seen = {}, {}, {}
    for key, value in state.items():
        ident = (value.data_ptr(), value.shape, value.stride(), value.dtype, value.device)
        if value.numel() and ident in seen:  # a tied weight (e.g. embeddings = output head)
            aliases[key] = seen[ident]        # stored once, restored by load()
            continue
        seen[ident] = key
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        save_file(tensors, str(tmp / WEIGHTS))
        card = dict(card)
        card.setdefault("name", path.name)
        card["aliases"] = aliases
        card["sha256"] = store.sha256_file(tmp / WEIGHTS)
        card["bytes"] = (tmp / WEIGHTS).stat().st_size
        (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        for f in (WEIGHTS, CARD):
            os.chmod(tmp / f, 0o644)
        store.replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_card(path) -> dict:
    """The card of checkpoint directory ``path``, or a clear error."""
    path = Path(path)
    card_file = path / CARD
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    if not card_file.exists():
        raise CorruptCheckpointError(f"{card_file} is missing, so {path} cannot be trusted; "
                                     f"{remake_hint(path)}")
    try:
        card = json.loads(card_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{card_file} is unreadable ({err}); "
                                     f"{remake_hint(path)}") from None
    if not isinstance(card, dict) or not isinstance(card.get("sha256"), str):
        raise CorruptCheckpointError(f"{card_file} has no valid sha256 entry (a hex string); {remake_hint(path)}")
    return card


def load(path) -> Checkpoint:
    """Load ``(state_dict, card)`` from ``path`` after checking the weights' SHA-256."""
    path = Path(path)
    card = read_card(path)
    weights = path / WEIGHTS
    if not weights.exists():
        raise CorruptCheckpointError(f"{weights} is missing; {remake_hint(path, card)}")
    actual = store.sha256_file(weights)
    if actual != card["sha256"]:
        raise CorruptCheckpointError(
            f"{weights} is corrupted or was changed: its SHA-256 is {actual[:12]}... but the card "
            f"says {card['sha256'][:12]}...; {remake_hint(path, card)}")
    state = load_file(str(weights))
    for alias, key in card.get("aliases", {}).items():
        if key not in state:
            raise CorruptCheckpointError(f"{path}: tied weight {alias} points at a missing {key}; "
                                         f"{remake_hint(path, card)}")
        state[alias] = state[key]
    return Checkpoint(state, card)
