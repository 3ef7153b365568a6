"""Offline top-k logit cache: run the teacher once, keep its k largest logits at every position.

A student trained from the cache never loads the teacher (``kdlab distill --from-cache``), and
the teacher's forward pass is paid once for any number of students. A cache is a directory::

    manifest.json             format, teacher, vocab_size, k, block, dtypes, the remake command,
                              and per file: blocks, bytes, sha256
    shard-00000.safetensors   input_ids    (n, S)         uint16 (int32 past 65,536 tokens)
                              topk_shifted (n, S-1, k-1)  bfloat16: v_j - v_1 for j = 2..k
                              topk_indices (n, S-1, k)    uint16 (int32 past 65,536 tokens), by value
    heldout.safetensors       input_ids of held-out blocks, to score the student (optional)

The values are the teacher's logits (no temperature) shifted by the largest, ``v_j - v_1``:
a softmax does not see a shift, the largest (always 0) need not be stored, and bf16 is more
precise near 0 than at a raw logit's size. Position t of a block predicts token t+1, so the
last position (no target) is not stored. Per token:
``(S-1)/S · (2·(k-1) + k · index bytes) + id bytes``: under 400 bytes at k = 100 for any
vocabulary up to 65,536 tokens and any block, against ``2·V`` bytes for full fp16 logits
(100,514 for GPT-2).
Every file is written beside its place and renamed into it, the manifest last; a reader checks
each file's sha256 before use and refuses a corrupt one, naming the command that re-creates it.
No pickle anywhere (safetensors and JSON).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ..core import store
from . import fast_kd

FORMAT, VERSION = "kdlab-logit-cache", 1
MANIFEST, HELDOUT = "manifest.json", "heldout.safetensors"
VALUE_DTYPE = torch.bfloat16


class CorruptCacheError(ValueError):
    """A cache file that is missing, unreadable, or does not match its checksum."""


def index_dtype(vocab_size: int) -> torch.dtype:
    """uint16 while every token id fits (V <= 65,536), else int32."""
    return torch.uint16 if vocab_size <= 65_536 else torch.int32


def bytes_per_token(vocab_size: int, k: int, block: int) -> float:
    """Predicted bytes per corpus token: ``(S-1)/S · (2·(k-1) + k · index bytes) + index bytes`` (headers aside)."""
    ib = torch.empty((), dtype=index_dtype(vocab_size)).element_size()
    return (block - 1) / block * ((k - 1) * VALUE_DTYPE.itemsize + k * ib) + ib


# ------------------------------------------------------------------ writing

@torch.no_grad()
def teacher_topk(teacher, x: torch.Tensor, k: int, vocab_size: int, chunk_size: int = 1024):
    """The teacher's k largest logits at positions ``0..S-2`` of blocks ``x`` ``(B, S)``, sorted by value:
    ``shifted (B, S-1, k-1)`` bf16 (``v_j - v_1``, j >= 2) and ``indices (B, S-1, k)``, the projection
    done a chunk of positions at a time from the last hidden states (the full logits are never held)."""
    h = fast_kd.last_hidden(teacher, x)[:, :-1]                                  # (B, S-1, H)
    w, b = fast_kd.output_head(teacher)
    flat = h.reshape(-1, h.shape[-1])
    values, indices = [], []
    for i in range(0, flat.shape[0], chunk_size):
        z = fast_kd.true_logits(torch.nn.functional.linear(flat[i:i + chunk_size], w, b), vocab_size)  # (C, V)
        v, j = z.float().topk(k, dim=-1)                                         # (C, k)
        values.append((v[:, 1:] - v[:, :1]).to(VALUE_DTYPE))                     # (C, k-1)
        indices.append(j)
    return (torch.cat(values).view(*h.shape[:2], k - 1), torch.cat(indices).view(*h.shape[:2], k))


def unshift(shifted: torch.Tensor) -> torch.Tensor:
    """``(..., k-1)`` stored values -> ``(..., k)`` logits ``v_j - v_1`` with the leading 0 put back."""
    return torch.cat([shifted.new_zeros((*shifted.shape[:-1], 1)), shifted], dim=-1)


def _write_atomic(tensors: dict, path: Path) -> dict:
    """safetensors to ``path`` via a temporary name; returns ``{"file", "bytes", "sha256"}``."""
    store.atomic_write(path, save_bytes({k: v.contiguous().cpu() for k, v in tensors.items()}))
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": store.sha256_file(path)}


def write_cache(teacher, blocks: torch.Tensor, out, *, k: int = 100, vocab_size: int | None = None,
                batch_size: int = 16, shard_blocks: int = 256, chunk_size: int = 1024, heldout=None,
                command: str | None = None, info: dict | None = None, add_files=None, progress: bool = False,
                autocast=None) -> dict:
    """Run ``teacher`` over ``blocks`` ``(N, S)`` once and write its top-k logits to the directory ``out``.

    Shards of ``shard_blocks`` blocks; ``heldout`` blocks ``(M, S)`` are stored as ids only;
    ``command`` (the command line that re-creates the cache) goes into every refusal message;
    ``info`` is merged into the manifest (teacher name, tokenizer, ...); ``add_files(dir)`` may write
    more files (e.g. the tokenizer) into the cache before its manifest. The directory is built
    beside ``out`` and renamed into place, so a reader never sees half a cache; an existing
    ``out`` is refused. ``autocast`` is a context factory (e.g. bf16) for the teacher's forward.
    Returns the manifest.
    """
    from contextlib import nullcontext

    from tqdm.auto import tqdm

    out = Path(out)
    vocab = vocab_size or fast_kd.output_head(teacher)[0].shape[0]
    _check_write(blocks, k, vocab, batch_size, shard_blocks, out)
    dev = next(teacher.parameters()).device
    ids_dtype = index_dtype(vocab)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        shards, bar = [], tqdm(total=len(blocks), desc="teacher top-k", disable=not progress, leave=False)
        for s in range(0, len(blocks), shard_blocks):
            part = blocks[s:s + shard_blocks]
            vals, idx = [], []
            for i in range(0, len(part), batch_size):
                with (autocast() if autocast else nullcontext()):
                    v, j = teacher_topk(teacher, part[i:i + batch_size].to(dev), k, vocab, chunk_size)
                vals.append(v.cpu())
                idx.append(j.to(ids_dtype).cpu())
                bar.update(len(v))
            tensors = {"input_ids": part.to(ids_dtype), "topk_shifted": torch.cat(vals),
                       "topk_indices": torch.cat(idx)}
            shards.append({**_write_atomic(tensors, tmp / f"shard-{len(shards):05d}.safetensors"),
                           "blocks": len(part)})
        bar.close()
        held = None
        if heldout is not None and len(heldout):
            held = {**_write_atomic({"input_ids": heldout.to(ids_dtype)}, tmp / HELDOUT), "blocks": len(heldout)}
        if add_files is not None:
            add_files(tmp)
        n_tokens = blocks.numel()
        data_bytes = sum(s["bytes"] for s in shards)
        manifest = {
            "format": FORMAT, "version": VERSION, **(info or {}),
            "vocab_size": vocab, "k": k, "block": blocks.shape[1], "positions_per_block": blocks.shape[1] - 1,
            "value_dtype": "bfloat16", "value_encoding": "v_j - v_1 for j = 2..k (v_1 = 0 not stored)",
            "index_dtype": str(ids_dtype).removeprefix("torch."),
            "n_blocks": len(blocks), "n_tokens": n_tokens, "bytes": data_bytes,
            "bytes_per_token": data_bytes / n_tokens,
            "bytes_per_token_full_fp16_logits": 2 * vocab,
            "shards": shards, "heldout": held,
            "command": command or f"kdlab cache-logits --k {k} --out {out}",
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        store.write_json(manifest, tmp / MANIFEST)
        os.chmod(tmp, 0o755)   # mkdtemp makes it private; a cache is for every user of the machine
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_write(blocks, k, vocab, batch_size, shard_blocks, out: Path) -> None:
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2 or blocks.shape[0] < 1 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be token ids (n_blocks >= 1, block >= 2), got "
                         f"{tuple(getattr(blocks, 'shape', ()))}")
    if blocks.is_floating_point() or int(blocks.min()) < 0 or int(blocks.max()) >= vocab:
        raise ValueError(f"blocks must be integer token ids in [0, {vocab - 1}]")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an integer in [1, {vocab}] (the vocabulary), got {k!r}")
    for name, value in (("batch_size", batch_size), ("shard_blocks", shard_blocks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists: delete it or write the cache to another --out")


# ------------------------------------------------------------------ reading

class LogitCache:
    """A cache directory written by ``write_cache``; every file checked against its sha256 before use.

    ``cache.k``, ``cache.vocab_size``, ``cache.block``, ``len(cache)`` (training blocks),
    ``cache.shard(i)`` (its tensors, indices as int64), ``cache.batches(batch_size, seed)``,
    ``cache.heldout()`` (ids or None), ``cache.verify()`` (every file, now).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.manifest = self._read_manifest()
        m = self.manifest
        self.k, self.vocab_size, self.block = m["k"], m["vocab_size"], m["block"]
        self.command = m["command"]
        self._verified: set[str] = set()

    def __len__(self) -> int:
        return self.manifest["n_blocks"]

    def _read_manifest(self) -> dict:
        file = self.path / MANIFEST
        hint = "re-create it with `kdlab cache-logits --teacher ... --out DIR` (see `kdlab cache-logits --help`)"
        if not file.is_file():
            raise CorruptCacheError(f"{file} is missing: {self.path} is not a finished logit cache; {hint}")
        try:
            m = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise CorruptCacheError(f"{file} is unreadable ({err}); {hint}") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise CorruptCacheError(f"{file} is not a kdlab logit cache manifest; {hint}")
        if m.get("version") != VERSION:
            raise CorruptCacheError(f"{file} has format version {m.get('version')}, this kdlab reads {VERSION}; "
                                    f"re-create it with `{m.get('command', 'kdlab cache-logits ...')}`")
        missing = {"k", "vocab_size", "block", "n_blocks", "shards", "command"} - set(m)
        if missing:
            raise CorruptCacheError(f"{file} lacks {sorted(missing)}; {hint}")
        return m

    def _load(self, entry: dict) -> dict[str, torch.Tensor]:
        """A file's tensors after its checksum matched the manifest's."""
        file = self.path / entry["file"]
        redo = f"re-create the cache with `{self.command}`"
        try:
            data = file.read_bytes()
        except OSError as err:
            raise CorruptCacheError(f"logit cache file {file} is missing or unreadable ({err.strerror}); "
                                    f"{redo}") from None
        got = hashlib.sha256(data).hexdigest()
        if got != entry["sha256"]:
            raise CorruptCacheError(f"logit cache file {file} is corrupt: its sha256 is {got[:16]}... but "
                                    f"{MANIFEST} says {entry['sha256'][:16]}...; {redo}")
        self._verified.add(entry["file"])
        return load_bytes(data)

    def shard(self, i: int) -> dict[str, torch.Tensor]:
        """Shard ``i``: ``input_ids`` ``(n, S)``, ``topk_values`` ``(n, S-1, k)`` bf16 (the logits shifted
        so the largest is 0), ``topk_indices`` ``(n, S-1, k)``; ids and indices as int64."""
        t = self._load(self.manifest["shards"][i])
        return {"input_ids": t["input_ids"].to(torch.int64), "topk_values": unshift(t["topk_shifted"]),
                "topk_indices": t["topk_indices"].to(torch.int64)}

    def heldout(self) -> torch.Tensor | None:
        """The held-out blocks ``(M, S)`` (int64), or None if the cache has none."""
        entry = self.manifest.get("heldout")
        return None if not entry else self._load(entry)["input_ids"].to(torch.int64)

    def verify(self) -> None:
        """Check every file now (``_load`` checks each on first use anyway)."""
        for entry in self.manifest["shards"] + ([self.manifest["heldout"]] if self.manifest.get("heldout") else []):
            self._load(entry)

    def batches(self, batch_size: int, seed: int = 0):
        """Endless ``(input_ids (B, S), topk_values (B, S-1, k), topk_indices (B, S-1, k))`` batches:
        each epoch visits the shards in a seeded random order and each shard's blocks shuffled, one
        shard in memory at a time (plus a batch's carry-over)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(self):
            raise ValueError(f"batch_size must be an integer in [1, {len(self)}] (the cache's blocks), "
                             f"got {batch_size!r}")
        gen = torch.Generator().manual_seed(seed)
        keys = ("input_ids", "topk_values", "topk_indices")
        carry = None
        while True:
            for i in torch.randperm(len(self.manifest["shards"]), generator=gen).tolist():
                t = self.shard(i)
                order = torch.randperm(len(t["input_ids"]), generator=gen)
                t = {key: t[key][order] for key in keys}
                if carry is not None:
                    t = {key: torch.cat([carry[key], t[key]]) for key in keys}
                n = len(t["input_ids"]) // batch_size * batch_size
                for s in range(0, n, batch_size):
                    yield tuple(t[key][s:s + batch_size] for key in keys)
                carry = {key: t[key][n:] for key in keys}


def summary(manifest: dict) -> str:
    """The storage figures of a cache, in words."""
    m = manifest
    mb = (m["bytes"] + (m["heldout"] or {}).get("bytes", 0)) / 1e6
    return (f"top-{m['k']} logit cache: {m['n_blocks']:,} blocks x {m['block']} tokens = {m['n_tokens']:,} tokens, "
            f"{len(m['shards'])} shard(s), {mb:.1f} MB\n"
            f"storage per token: {m['bytes_per_token']:.1f} bytes (values {m['value_dtype']}, shifted so the "
            f"largest, 0, is not stored; indices "
            f"{m['index_dtype']}); full fp16 logits would take {m['bytes_per_token_full_fp16_logits']:,} bytes "
            f"per token ({m['bytes_per_token_full_fp16_logits'] / m['bytes_per_token']:.0f}x more)")
