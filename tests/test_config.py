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


# ------------------------------------------------------------------ threads that fit the machine

def _v1_tree(tmp_path, quotas: dict[str, tuple[int, int]], own: str = "/user/kernel"):
    """A fabricated cgroup v1 tree: ``quotas`` maps a group path to (quota_us, period_us)."""
    (tmp_path / "proc").mkdir(parents=True)
    (tmp_path / "proc" / "cgroup").write_text(f"4:memory:/x\n2:cpu,cpuacct:{own}\n0::/\n")
    root = tmp_path / "cg"
    for group, (quota, period) in quotas.items():
        d = root / "cpu,cpuacct" / group.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (d / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path / "proc" / "cgroup", root


def test_cpu_quota_reads_cgroup_v1_and_takes_the_smallest_up_the_hierarchy(tmp_path):
    proc, root = _v1_tree(tmp_path, {"/": (-1, 100000), "/user": (150000, 100000), "/user/kernel": (-1, 100000)})
    assert config.cpu_quota(proc, root) == pytest.approx(1.5)     # the kernel's own group has none; its parent has
    proc2, root2 = _v1_tree(tmp_path / "b", {"/": (-1, 100000), "/user": (300000, 100000),
                                             "/user/kernel": (50000, 100000)})
    assert config.cpu_quota(proc2, root2) == pytest.approx(0.5)


def test_cpu_quota_reads_cgroup_v2_and_none_means_none(tmp_path):
    (tmp_path / "cgroup").write_text("0::/kubepods/pod1/c1\n")
    root = tmp_path / "cg"
    (root / "kubepods" / "pod1" / "c1").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "kubepods" / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "pod1" / "cpu.max").write_text("200000 100000\n")   # Binder: 2 CPUs on a big node
    (root / "kubepods" / "pod1" / "c1" / "cpu.max").write_text("max 100000\n")
    assert config.cpu_quota(tmp_path / "cgroup", root) == pytest.approx(2.0)
    (root / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert config.cpu_quota(tmp_path / "cgroup", root) is None
    assert config.cpu_quota(tmp_path / "missing", root) is None


def test_threads_follow_the_quota_not_the_host_cores(tmp_path, monkeypatch):
    proc, root = _v1_tree(tmp_path, {"/user/kernel": (100000, 100000)})
    quota = config.cpu_quota(proc, root)
    monkeypatch.setattr(config, "cpu_quota", lambda: quota)
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.delenv("KDLAB_THREADS", raising=False)
    assert config.cpu_count() == 1                         # a one-CPU quota on a 64-core host
    threads = torch.get_num_threads()
    try:
        assert config.set_threads() == 1
        monkeypatch.setenv("KDLAB_THREADS", "3")
        assert config.set_threads() == 3                   # an explicit setting wins
    finally:
        torch.set_num_threads(threads)
