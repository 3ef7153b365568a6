"""config: quick mode, device choice, seeding, paths, allocator tuning."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from kdlab_lib import config


def _quick_in_subprocess(value: str) -> str:
    code = "from kdlab_lib import config; print(config.QUICK)"
    env = {"KDLAB_QUICK": value, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow
def test_quick_mode_comes_from_the_environment():
    assert config.QUICK  # the test suite runs in quick mode
    assert _quick_in_subprocess("1") == "True"
    assert _quick_in_subprocess("0") == "False"


def test_budget_picks_by_mode():
    assert config.budget(100, 3) == 3


def test_device_choice(monkeypatch):
    monkeypatch.setenv("KDLAB_DEVICE", "cpu")
    assert config.device() == torch.device("cpu")
    monkeypatch.delenv("KDLAB_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert config.device().type == expected
    assert config.device("cpu").type == "cpu"


def test_seeding_is_repeatable_and_validated():
    config.seed_everything(7)
    a = torch.rand(3)
    g = config.seed_everything(7)
    assert torch.equal(a, torch.rand(3))
    assert torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=torch.Generator().manual_seed(7)))
    for bad in (-1, 1.5, "3"):
        with pytest.raises(ValueError, match="seed"):
            config.seed_everything(bad)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLAB_CACHE", str(tmp_path / "c"))
    assert config.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("KDLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.cache_dir() == tmp_path / "xdg" / "kdlab"


def test_data_dir_is_the_repository_data():
    assert (config.DATA_DIR / "README.md").exists()
    assert config.MODELS_DIR == config.DATA_DIR / "models"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_malloc_tuning_can_be_switched_off(monkeypatch):
    assert config.LEAN_MALLOC is True
    monkeypatch.setenv("KDLAB_MALLOC_TUNING", "0")
    assert config.lean_malloc() is False


def test_release_memory_runs_and_collects():
    import weakref

    class Big:
        pass
    a, b = Big(), Big()
    a.other, b.other = b, a  # a cycle only the garbage collector frees
    ref = weakref.ref(a)
    del a, b
    assert isinstance(config.release_memory(), bool)
    assert ref() is None


def test_trim_heap_runs_where_glibc_is():
    assert config.trim_heap() is (config._glibc() is not None)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert config._glibc() is not None
