"""``kdlab bench NAME``: one module per chapter (``ch01`` ... ``ch06``), plus ``notebooks`` (every
notebook's wall time and peak memory) and ``gpu`` (the fast path on a GPU). Each seeded bench
takes ``out=`` and ``seeds=`` and writes its results file through ``core.store.BenchRun``."""
from __future__ import annotations

from .ch01 import SEEDS, bench_mnist
from .ch02 import bench_bert
from .ch03 import bench_gpt2, bench_gpt2_beyond
from .ch04 import bench_self
from .ch05 import bench_staged, bench_staged_gpt2
from .ch06 import bench_eval

SEEDED = {  # name -> function(out=, seeds=): the benches that write data/results/NAME.json
    "mnist": bench_mnist, "bert": bench_bert, "gpt2": bench_gpt2, "gpt2-beyond": bench_gpt2_beyond,
    "self": bench_self, "staged": bench_staged, "staged-gpt2": bench_staged_gpt2, "eval": bench_eval,
}

__all__ = ["SEEDED", "SEEDS"]
