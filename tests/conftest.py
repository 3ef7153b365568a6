"""Shared fixtures for the unit tests.

Quick mode is on for every test. The MNIST loader unpacks about 55 MB into the
user cache, so the tests that only *read* MNIST reuse the default cache; the
tests that need a cache of their own ask for the ``isolated_cache`` fixture.
Nothing here may reach the network: Hugging Face is told to stay offline.
"""
from __future__ import annotations

import os

os.environ.setdefault("KDLAB_QUICK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import socket  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# The tensors in the unit tests are tiny: one thread is faster than two, and far
# faster when another process is busy on the same 2 cores (thread hand-offs stall).
torch.set_num_threads(int(os.environ.get("KDLAB_TEST_THREADS", "1")))


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator, so random test tensors are the same every run."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh, empty ``KDLAB_CACHE`` for this test only (MNIST's unpack cache reset too)."""
    from kdlab_lib import datasets

    cache = tmp_path / "kdlab-cache"
    monkeypatch.setenv("KDLAB_CACHE", str(cache))
    datasets.mnist_root.cache_clear()
    yield cache
    monkeypatch.undo()
    datasets.mnist_root.cache_clear()  # the next test sees the default cache again


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a network connection fail loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to use the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def mnist_train():
    from kdlab_lib import datasets
    return datasets.load_mnist("train")


@pytest.fixture(scope="session")
def tiny_train(mnist_train):
    """512 training digits: enough for a one-epoch run in well under a second."""
    from kdlab_lib import datasets
    return datasets.take(mnist_train, 512, seed=0)


@pytest.fixture(scope="session")
def tiny_val():
    """256 validation digits."""
    from kdlab_lib import datasets
    return datasets.take(datasets.load_mnist("val"), 256, seed=1)


def pytest_runtest_setup(item):
    """``@pytest.mark.needs(available, "what is missing and how to install it")``: an optional package a
    user may lack (the MiniLM weights, Debian's Fashion-MNIST, the data-source packages). Without it the
    test is skipped with the reason; under CI (``CI=true``), where ``.ci/run`` installs everything, the
    missing package is a failure, so a broken install can never pass quietly."""
    for mark in item.iter_markers("needs"):
        available, what = mark.args
        if not available:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI=true but {what}", pytrace=False)
            pytest.skip(what)


def _save_tiny_gpt2(path, layers, hidden, vocab=4096, seed=0):
    """A random ``GPT2LMHeadModel`` (64 positions, 2 heads) saved with ``save_pretrained``; returns ``path``."""
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=hidden, n_layer=layers, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def _distill_setup(root, vocab=4096):
    """``(root, teacher dir, student dir, corpus file)`` for `kdlab distill` runs: a 2 x 32 teacher with the
    lab's BPE tokenizer beside it, a 1 x 16 student, and 12,000 characters of Shakespeare."""
    from kdlab_lib import text
    teacher = _save_tiny_gpt2(root / "teacher", 2, 32, vocab, seed=1)
    text.load_tokenizer("bpe").save_pretrained(teacher)   # the teacher's own tokenizer, found beside it
    student = _save_tiny_gpt2(root / "student", 1, 16, vocab, seed=2)
    corpus = root / "corpus.txt"
    corpus.write_text(text.load_corpus("shakespeare", "val")[0][:12000], encoding="utf-8")
    return root, teacher, student, corpus


@pytest.fixture(scope="session")
def tiny_gpt2():
    """``tiny_gpt2(path, layers, hidden, vocab=4096, seed=0)``: save a random tiny GPT-2 at ``path``."""
    return _save_tiny_gpt2


@pytest.fixture(scope="session")
def distill_setup():
    """``distill_setup(root, vocab=4096)``: tiny teacher, student and corpus for `kdlab distill`."""
    return _distill_setup
