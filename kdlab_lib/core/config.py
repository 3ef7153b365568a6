"""Run-time settings every other module reads: quick mode, paths, device, seeding, threads, memory.

- ``QUICK`` is true when the environment has ``KDLAB_QUICK=1`` (tests and CI):
  same code paths, tiny budgets, results not claimed.
- ``device()`` picks cuda > mps > cpu, or what ``KDLAB_DEVICE`` names.
- ``seed_everything(seed)`` makes a run repeatable on the CPU.
- ``DATA_DIR`` is the repository's shipped ``data/`` folder; ``cache_dir()`` is
  the user's cache (``KDLAB_CACHE``, else ``$XDG_CACHE_HOME/kdlab``, else
  ``~/.cache/kdlab``) where unpacked data sets and bench models live.
- ``set_threads()`` gives torch one thread per CPU this process may really use (``cpu_count``: the
  affinity mask capped by the cgroup's CPU quota, as on Binder); the kernels run with
  ``OMP_WAIT_POLICY=PASSIVE`` (set where they start: the kernelspec, ``binder/start``, the
  Makefile), so idle threads sleep instead of spinning against other processes.
- ``lean_malloc()``, ``trim_heap()``, ``release_memory()``: keeping a notebook's memory close to what
  it really holds (glibc).
"""
from __future__ import annotations

import ctypes
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

QUICK: bool = os.environ.get("KDLAB_QUICK", "0").strip().lower() in {"1", "true", "yes"}

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("KDLAB_DATA", REPO_ROOT / "data"))
MODELS_DIR = DATA_DIR / "models"
RESULTS_DIR = DATA_DIR / "results"


def budget(classroom, quick):
    """Return ``quick`` in quick mode, ``classroom`` otherwise (one place to size runs)."""
    return quick if QUICK else classroom


def cache_dir() -> Path:
    """The user cache directory (created on first use)."""
    root = os.environ.get("KDLAB_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "kdlab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def device(prefer: str | None = None) -> torch.device:
    """cuda > mps > cpu, unless ``prefer`` or env ``KDLAB_DEVICE`` names one."""
    name = prefer or os.environ.get("KDLAB_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(dev: torch.device) -> bool:
    """Whether bf16 autocast pays off on ``dev`` (env ``KDLAB_BF16=0/1`` decides if set).

    On this lab's 2-core AVX-512-BF16 CPU it made a small BERT's training steps 2-3x
    faster; CPUs without native bf16 would emulate it slowly, so it stays off there.
    """
    forced = os.environ.get("KDLAB_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu" and sys.platform.startswith("linux"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def autocast(dev: torch.device):
    """``torch.autocast`` in bf16 where ``bf16_supported(dev)``, else a no-op context."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16_supported(dev))


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded the same way."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _cgroup_dirs(root: Path, path: str) -> list[Path]:
    """``root/path`` and each of its parents up to ``root`` (where a container shows its own group as root)."""
    here = root / path.lstrip("/")
    dirs = [here, *here.parents] if here.is_dir() else [root]
    return [d for d in dirs if d == root or root in d.parents]


def cpu_quota(proc_cgroup: Path | str = "/proc/self/cgroup", root: Path | str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup, in CPUs, the smallest up the hierarchy; None without one.

    cgroup v2 (the line ``0::/path``): ``cpu.max`` holds ``"quota period"`` (``"max period"``: none).
    cgroup v1 (a line ``N:cpu,cpuacct:/path``): ``cpu.cfs_quota_us / cpu.cfs_period_us`` (-1: none).
    Binder and Kubernetes give a user a quota on a many-core node whose cores all show in the
    affinity mask: the quota, not the core count, says how much CPU the kernel really has.
    """
    root = Path(root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":                                   # v2, unified
            v2 = root if (root / "cgroup.controllers").exists() else root / "unified"   # hybrid: v2 beside v1
            for d in _cgroup_dirs(v2, path) if v2.is_dir() else []:
                fields = _read(d / "cpu.max").split()
                if len(fields) == 2 and fields[0] != "max":
                    quotas.append(int(fields[0]) / int(fields[1]))
        elif "cpu" in controllers.split(","):                                        # v1, the cpu controller
            mount = next((root / m for m in (controllers, "cpu", "cpu,cpuacct") if (root / m).is_dir()), None)
            for d in _cgroup_dirs(mount, path) if mount else []:
                quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                if quota and period and int(quota) > 0:
                    quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def cpu_count() -> int:
    """CPUs this process may really use: the cores in its affinity mask, capped by its cgroup's CPU quota
    (rounded down, at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota + 1e-6)))
    return max(1, n)


def set_threads(n: int | None = None) -> int:
    """torch's CPU threads: ``n``, else ``KDLAB_THREADS``, else ``cpu_count()``; returns the count set."""
    n = n or int(os.environ.get("KDLAB_THREADS", "0") or 0) or cpu_count()
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def _glibc():
    """glibc's C library (for ``mallopt`` and ``malloc_trim``), or None where there is none (macOS,
    Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None   # not glibc (musl)


def lean_malloc() -> bool:
    """Keep the process's peak memory close to what it really holds (glibc on Linux only).

    glibc gives each thread its own malloc arena; with PyTorch's worker threads
    the short-lived batch buffers of CPU training pile up in several arenas as
    unreturned heap, and a notebook's peak varied between 1.1 and 1.9 GB from
    run to run here. Two arenas (``M_ARENA_MAX = 2``) kept it near 1.1 GB at
    the same speed, inside Binder's ~2 GB. ``KDLAB_MALLOC_TUNING=0`` leaves the
    allocator alone.
    """
    libc = _glibc()
    if os.environ.get("KDLAB_MALLOC_TUNING", "1") == "0" or libc is None:
        return False
    m_arena_max = -8
    return bool(libc.mallopt(m_arena_max, 2))


LEAN_MALLOC = lean_malloc()


def trim_heap() -> bool:
    """Hand the heap that freed tensors left behind back to the system (glibc's ``malloc_trim``): a
    training loop's short-lived batch buffers otherwise stay in the process, and the next model starts
    from the bloated footprint. Cheap (no garbage collection). True where the trim ran (glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def release_memory() -> bool:
    """Collect garbage (cycles included), then ``trim_heap``, so that a notebook's next large model
    starts from a smaller footprint. True where the trim ran (glibc)."""
    import gc
    gc.collect()
    return trim_heap()
