"""Model builders and the loader for shipped, local and hub teachers.

Image models (MNIST, 28x28 grey): ``mlp(hidden)`` such as Hinton et al.'s
800-800 and 30-30 students, and ``cnn()``, the small convolutional teacher the
lab ships (Hinton's teacher was a 1200-1200 MLP with dropout and jitter; on a
CPU budget it does not reach the lab's error target, a small CNN does).

Every builder is reachable through ``build(config)`` with a plain dict such as
``{"arch": "mlp", "hidden": [800, 800]}``: that dict is what a checkpoint card
stores, so ``load_teacher`` can rebuild the model before loading the weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoints, config

SHIPPED = {  # short name -> directory under data/models
    "mnist": "mnist",
}


def mlp(hidden=(800, 800), *, n_in: int = 784, n_out: int = 10, dropout: float = 0.0) -> nn.Sequential:
    """A fully connected ReLU net ``784 -> hidden... -> 10`` on flattened images."""
    hidden = [int(h) for h in hidden]
    if not hidden or any(h <= 0 for h in hidden):
        raise ValueError(f"hidden must be a non-empty list of positive sizes, got {hidden}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def cnn(channels=(32, 64), *, hidden: int = 256, n_out: int = 10, dropout: float = 0.3) -> nn.Sequential:
    """A small CNN: two blocks of [conv3x3-BN-ReLU x2, maxpool], then a dense layer.

    Shapes: (B, 1, 28, 28) -> (B, c1, 14, 14) -> (B, c2, 7, 7) -> (B, hidden) -> (B, 10).
    """
    c1, c2 = (int(c) for c in channels)

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, c1), *block(c1, c2), nn.Flatten(),
                         nn.Dropout(dropout), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, n_out))


BUILDERS = {"mlp": mlp, "cnn": cnn}


def build(model_config: dict) -> nn.Module:
    """Build a model from a card's ``config`` dict, e.g. ``{"arch": "mlp", "hidden": [30, 30]}``."""
    kwargs = dict(model_config)
    arch = kwargs.pop("arch", None)
    if arch not in BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[arch](**kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shipped_dir(name: str) -> Path:
    return config.MODELS_DIR / SHIPPED[name]


def load_teacher(name, online: bool = False, *, device=None) -> nn.Module:
    """An eval-mode model from a shipped short name, a local directory or (online) the hub.

    - a shipped name (``"mnist"``, ...): ``data/models/NAME`` checked against its card;
    - a local directory: a kdlab checkpoint (``card.json``) or a Hugging Face
      ``save_pretrained`` folder (``config.json``), loaded without the network;
    - a hub name such as ``"gpt2-large"``: only with ``online=True``.
    Students load the same way.
    """
    if isinstance(name, str) and name in SHIPPED:
        model = _load_kdlab(shipped_dir(name))
    elif Path(name).is_dir():
        path = Path(name)
        if (path / checkpoints.CARD).exists():
            model = _load_kdlab(path)
        elif (path / "config.json").exists():
            model = _load_hf(str(path), local_files_only=True)
        else:
            raise ValueError(f"{path} holds neither a kdlab checkpoint (card.json) nor a "
                             f"Hugging Face model (config.json)")
    elif not online:
        raise ValueError(
            f"{name!r} is not a shipped model ({', '.join(sorted(SHIPPED))}) nor a local "
            f"directory. To download it from the Hugging Face Hub, call "
            f"load_teacher({name!r}, online=True) on a machine with internet access.")
    else:
        model = _load_hf(str(name), local_files_only=False)
    return model.to(device or config.device()).eval()


def _load_kdlab(path: Path) -> nn.Module:
    state, card = checkpoints.load(path)
    model = build(card["config"])
    reference = model.state_dict()
    if set(state) != set(reference):
        raise checkpoints.CorruptCheckpointError(
            f"{path}: the weights do not fit the card's config {card['config']}; "
            f"{checkpoints.remake_hint(path, card)}")
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    model.card = card
    if card["config"].get("arch") == "cnn":  # 2-4x faster convolutions on the CPU
        model = model.to(memory_format=torch.channels_last)
    return model


def _load_hf(name: str, local_files_only: bool) -> nn.Module:
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(name, local_files_only=local_files_only)
    archs = " ".join(cfg.architectures or [])
    if "MaskedLM" in archs:
        auto = transformers.AutoModelForMaskedLM
    elif "LMHead" in archs or "CausalLM" in archs:
        auto = transformers.AutoModelForCausalLM
    elif "SequenceClassification" in archs:
        auto = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModel
    return auto.from_pretrained(name, local_files_only=local_files_only)
