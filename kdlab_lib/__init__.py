"""kdlab_lib: the library behind the kdlab notebooks, in four layers (each imports only those above it).

    core/      losses, checks, metrics, models, datasets, text, checkpoints, train, train_text,
               tables, config, store: the distillation library itself (imports nothing above)
    chapters/  ch01_soft_labels ... ch06_evaluation: each chapter's budget, experiments, verdicts
    lab/       widgets, plots, exercises: what a notebook shows
    scale/     accelerate_distill, chunked_loss, fast_kd, logit_cache: the script path for real models
    tools/     cli, prepare, bench: the ``kdlab`` command (nothing imports it but the entry points)

The modules of ``core``, ``lab`` and ``scale`` are also reachable by their short names, so
``from kdlab_lib import losses, widgets`` and ``import kdlab_lib.losses`` keep working: each short
name is the same module object as its long one (``kdlab_lib.losses is kdlab_lib.core.losses``).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.2.0"

_LAYER = {  # short name -> the folder that holds it
    **dict.fromkeys(("checks", "checkpoints", "config", "datasets", "losses", "metrics", "models", "store",
                     "tables", "text", "train", "train_text"), "core"),
    **dict.fromkeys(("exercises", "plots", "widgets"), "lab"),
    **dict.fromkeys(("accelerate_distill", "chunked_loss", "fast_kd", "logit_cache"), "scale"),
}


def _target(name: str) -> str:
    return f"{__name__}.{_LAYER[name]}.{name}"


class _ShortNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import kdlab_lib.losses`` load ``kdlab_lib.core.losses`` and register the same module
    object under both names (lazily: ``kdlab_lib.widgets`` imports ipywidgets only when asked for)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, short = fullname.rpartition(".")
        if package == __name__ and short in _LAYER:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(_target(spec.name.rpartition(".")[2]))
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system has just pointed module.__spec__ at the short name: point it back
        module.__spec__ = self._own_spec


if not any(isinstance(f, _ShortNames) for f in sys.meta_path):
    sys.meta_path.append(_ShortNames())


def __getattr__(name: str):
    """``kdlab_lib.losses`` as an attribute (``from kdlab_lib import losses``), imported on first use."""
    if name in _LAYER:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAYER])
