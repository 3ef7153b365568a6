"""Files the lab writes and trusts: checksums, atomic writes, results files.

- ``sha256_file`` / ``read_sums`` / ``verify`` / ``write_sums``: ``SHA256SUMS`` files in
  ``sha256sum`` format beside shipped data; a missing or changed file is refused with the
  command that re-creates it.
- ``atomic_write`` (a file) and ``replace_dir`` (a directory): written beside their place and
  renamed into it, so a reader never sees half a file.
- Results files (``data/results/NAME.json``): ``BenchRun`` records the provenance every
  ``kdlab bench`` file carries (command, git commit, date, mode, seeds, seconds, threads) and
  writes it around the numbers; ``read_results`` reads one back with a clear error.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from . import config

SUMS = "SHA256SUMS"


# ------------------------------------------------------------------ checksums

def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(root: Path, remake: str) -> dict[str, str]:
    """``{relative path: sha256}`` from ``root/SHA256SUMS``; a missing file names ``remake``."""
    sums_file = Path(root) / SUMS
    if not sums_file.exists():
        raise FileNotFoundError(f"{sums_file} is missing; re-create it with `{remake}`")
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def verify(root: Path, relpath: str, remake: str, sums: dict[str, str] | None = None) -> str:
    """Check ``root/relpath`` against ``root/SHA256SUMS`` (or ``sums``); return its digest."""
    root = Path(root)
    sums = read_sums(root, remake) if sums is None else sums
    path = root / relpath
    if relpath not in sums:
        raise ValueError(f"{root / SUMS} has no entry for {relpath}; re-create both with `{remake}`")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; re-create it with `{remake}`")
    digest = sha256_file(path)
    if digest != sums[relpath]:
        raise ValueError(f"{path} is corrupted (its SHA-256 does not match {root / SUMS}); "
                         f"re-create it with `{remake}`")
    return digest


def write_sums(root: Path, digests: dict[str, str]) -> Path:
    """Write ``root/SHA256SUMS`` (``sha256sum`` format) for ``{relative path: digest}``."""
    lines = "".join(f"{digest}  {name}\n" for name, digest in digests.items())
    return atomic_write(Path(root) / SUMS, lines.encode())


# ------------------------------------------------------------------ atomic writes

def atomic_write(path, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` through a
    temporary file beside it and a rename; the file is world-readable (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            data(f) if callable(data) else f.write(data)
        os.chmod(tmp, 0o644)   # mkstemp makes it private; the lab's files are for every user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` (built beside ``target``) at ``target``, replacing what was there."""
    new, target = Path(new), Path(target)
    os.chmod(new, 0o755)   # mkdtemp makes it private
    trash = target.parent / f".{target.name}-old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.rename(target, trash)
    try:
        os.rename(new, target)
    except OSError:
        if not target.exists() and trash.exists():   # restore what was there
            os.rename(trash, target)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def write_json(data: dict, path) -> Path:
    """``data`` as indented JSON, written atomically."""
    return atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


# ------------------------------------------------------------------ results files

def git_commit() -> str:
    """The checked-out commit (``+dirty`` with uncommitted changes to tracked files), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def results_path(name: str) -> Path:
    """Where ``kdlab bench NAME`` writes: ``data/results/NAME.json``, or the cache in quick mode
    (tests never overwrite the shipped results)."""
    if config.QUICK:
        return config.cache_dir() / "results" / f"{name}-quick.json"
    return config.RESULTS_DIR / f"{name}.json"


def read_results(name: str, path=None) -> dict:
    """A results file written by ``kdlab bench NAME``, with a clear error if it is missing."""
    path = Path(path or config.RESULTS_DIR / f"{name}.json")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; create it with `kdlab bench {name}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-create it with `kdlab bench {name}`") from None


class BenchRun:
    """The provenance of one ``kdlab bench NAME`` run, read when it starts (the code that ran).

    ``write(body)`` puts ``{"command", "git_commit", "date", "quick", "seeds"}`` before the numbers
    and ``{"seconds", "threads"}`` after them, and writes the file atomically.
    """

    def __init__(self, name: str, seeds=None, *, command: str | None = None):
        self.name, self.seeds = name, None if seeds is None else list(seeds)
        self.command = command or f"kdlab bench {name}"
        self.threads = config.set_threads()
        self.commit, self.start = git_commit(), time.perf_counter()
        self.date = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def envelope(self, body: dict) -> dict:
        head = {"command": self.command, "git_commit": self.commit, "date": self.date, "quick": config.QUICK}
        if self.seeds is not None:
            head["seeds"] = self.seeds
        return {**head, **body, "seconds": round(self.seconds, 1), "threads": self.threads}

    def write(self, body: dict, out=None) -> tuple[Path, dict]:
        """Write the results file (``out``, else ``results_path(name)``); returns ``(path, results)``."""
        results = self.envelope(body)
        return write_json(results, out or results_path(self.name)), results

    def write_entry(self, key: str, body: dict, out=None) -> tuple[Path, dict]:
        """Put ``body``, with this run's own envelope, under ``key`` of the existing results file (``kdlab bench
        NAME --only KEY``), leaving the rest of the file as it was; returns ``(path, results)``."""
        path = Path(out) if out else results_path(self.name)
        results = read_results(self.name, path) if path.exists() else {}
        results[key] = self.envelope(body)
        return write_json(results, path), results
