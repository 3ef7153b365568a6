"""The library's layers, checked by reading every import (module-level, inside functions, relative).

core imports nothing above it; chapters import core; lab imports core and chapters; scale imports
core; tools may import anything; nothing imports tools but the command-line entry point
(``kdlab_lib/cli.py``). A second test runs the same check on a fabricated package with one upward
import and expects it to be caught; a third builds the wheel and finds every subpackage in it.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kdlab_lib

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {  # layer -> the layers it may import
    "core": {"core"},
    "chapters": {"core", "chapters"},
    "lab": {"core", "chapters", "lab"},
    "scale": {"core", "scale"},
    "tools": {"core", "chapters", "lab", "scale", "tools"},
}
ENTRY_POINTS = {"cli"}   # top-level modules that may import tools


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every ``(line, absolute module or module.name)`` the file imports, wherever the import sits."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return out


def layer_violations(root: Path, package: str, short_names: dict[str, str]) -> list[str]:
    """``file:line imports X`` for every import of ``package`` that crosses the layers the wrong way.
    ``short_names`` maps a top-level alias (``losses``) to its layer (``core``)."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root, package)
        parts = module.split(".")
        layer = parts[1] if len(parts) > 1 else None
        for line, target in _imported(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            tparts = target.split(".")
            if tparts[0] != package or len(tparts) < 2:
                continue
            target_layer = short_names.get(tparts[1], tparts[1])
            if target_layer not in ALLOWED:
                continue   # the package itself, or a top-level entry point
            if layer in ALLOWED:
                ok = target_layer in ALLOWED[layer]
            else:   # the package's own __init__ and the top-level entry points
                ok = target_layer != "tools" or layer in ENTRY_POINTS
            if not ok:
                bad.append(f"{path.relative_to(root)}:{line} ({layer}) imports {target} ({target_layer})")
    return bad


def test_the_library_keeps_its_layers():
    assert layer_violations(ROOT / "kdlab_lib", "kdlab_lib", kdlab_lib._LAYER) == []


def test_every_module_sits_in_a_layer_and_every_layer_says_what_it_holds():
    top = {p.stem for p in (ROOT / "kdlab_lib").glob("*.py")}
    assert top == {"__init__", "cli"}, f"modules outside the layers: {sorted(top - {'__init__', 'cli'})}"
    for layer in ALLOWED:
        doc = ast.get_docstring(ast.parse((ROOT / "kdlab_lib" / layer / "__init__.py").read_text()))
        assert doc and len(doc.split()) > 20, f"kdlab_lib/{layer}/__init__.py needs a paragraph saying what it holds"
    for name, layer in kdlab_lib._LAYER.items():
        assert (ROOT / "kdlab_lib" / layer / f"{name}.py").exists(), f"kdlab_lib.{name} points at a missing module"


def test_an_upward_import_is_caught(tmp_path):
    pkg = tmp_path / "fakelab"
    for layer in ALLOWED:
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text('"""A layer."""\n')
    (pkg / "__init__.py").write_text("")
    (pkg / "lab" / "plots.py").write_text("def draw():\n    return 1\n")
    (pkg / "core" / "losses.py").write_text("import math\n\nfrom . import checks\n\n\ndef kd():\n"
                                            "    from ..lab import plots   # upward, hidden in a function\n"
                                            "    return plots.draw()\n")
    (pkg / "core" / "checks.py").write_text("")
    (pkg / "chapters" / "ch01.py").write_text("from fakelab.tools import bench\n")   # chapters -> tools
    (pkg / "scale" / "fast.py").write_text("from ..chapters import ch01\n")          # scale -> chapters
    (pkg / "lab" / "widgets.py").write_text("from fakelab import losses\n")          # a short name: allowed
    found = layer_violations(pkg, "fakelab", {"losses": "core"})
    assert len(found) == 3, found
    assert any("core/losses.py:7" in f and "fakelab.lab.plots" in f for f in found)
    assert any("chapters/ch01.py" in f and "(tools)" in f for f in found)
    assert any("scale/fast.py" in f and "(chapters)" in f for f in found)


def test_short_names_are_the_same_modules_and_the_cli_still_runs():
    import kdlab_lib.losses
    from kdlab_lib import checkpoints, datasets, exercises, losses, metrics, models, plots, widgets
    from kdlab_lib.core import losses as core_losses
    assert kdlab_lib.losses is losses is core_losses and losses.__spec__.name == "kdlab_lib.core.losses"
    assert all(m.__name__.startswith("kdlab_lib.") for m in (checkpoints, datasets, exercises, metrics, models,
                                                            plots, widgets))
    out = subprocess.run([sys.executable, "-m", "kdlab_lib.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "bench" in out.stdout


@pytest.mark.slow
def test_the_wheel_holds_every_subpackage(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("kdlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in sorted((ROOT / "kdlab_lib").rglob("__init__.py")):
        assert str(init.relative_to(ROOT)) in names, f"{init.relative_to(ROOT)} is missing from the wheel"
    assert "kdlab_lib/cli.py" in names and "kdlab_lib/tools/bench/ch05.py" in names
