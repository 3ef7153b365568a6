"""Binder (repo2docker) configuration: binder/ must install what pyproject.toml asks for.

Once binder/ exists repo2docker ignores pyproject.toml, so its runtime dependencies are pinned
again in binder/requirements.txt; these tests keep the two lists the same, check that every pin
satisfies pyproject's own range, and that postBuild installs the package and the data packages
that `make setup` installs.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def binder_lines() -> list[str]:
    lines = []
    for raw in (BINDER / "requirements.txt").read_text().splitlines():
        line = raw.split(" #")[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def binder_pins() -> dict[str, Requirement]:
    pins = {}
    for line in binder_lines():
        if line.startswith("-"):
            continue  # pip options: the index line
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in pins, f"{req.name} is pinned twice in binder/requirements.txt"
        pins[name] = req
    return pins


def pinned_version(req: Requirement) -> Version:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", \
        f"binder/requirements.txt: {req} is not pinned with a single `==`"
    return Version(specs[0].version)


def test_every_runtime_dependency_is_pinned_for_binder_and_nothing_else():
    wanted, pinned = set(runtime_requirements()), set(binder_pins())
    assert not wanted - pinned, f"in pyproject.toml, not pinned in binder/requirements.txt: {sorted(wanted - pinned)}"
    assert not pinned - wanted, f"pinned in binder/requirements.txt, not in pyproject.toml: {sorted(pinned - wanted)}"


def test_binder_pins_are_exact_and_inside_pyprojects_ranges():
    runtime = runtime_requirements()
    for name, req in binder_pins().items():
        version = pinned_version(req)
        public = Version(version.public)  # 2.14.1+cpu -> 2.14.1: the local suffix names the build
        assert runtime[name].specifier.contains(public, prereleases=True), \
            f"binder pins {req}, outside pyproject.toml's {runtime[name]}"


def test_binder_torch_is_the_cpu_build():
    assert CPU_INDEX in binder_lines(), "binder/requirements.txt needs the PyTorch CPU wheel index line"
    pins = binder_pins()
    for name in ("torch", "torchvision"):
        assert pinned_version(pins[name]).local == "cpu", f"binder should pin the CPU-only {name}: {pins[name]}"


def test_runtime_txt_names_a_python_that_pyproject_accepts():
    text = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(3\.\d+)", text)
    assert match, f"binder/runtime.txt should read like python-3.11, not {text!r}"
    requires = pyproject()["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(match[1] + ".0")


def test_postbuild_stops_on_errors_and_installs_the_package_and_the_data_packages():
    post = BINDER / "postBuild"
    assert post.stat().st_mode & 0o111, "binder/postBuild must be executable"
    commands = [ln.strip() for ln in post.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert commands[0] == "set -e", "binder/postBuild must start with `set -e` (after comments)"
    body = "\n".join(commands)
    assert re.search(r"^pip install\b.*--no-deps\b.*-e \.$", body, re.M), "postBuild must `pip install --no-deps -e .`"
    assert "matplotlib" in body, "postBuild should build matplotlib's font cache"
    # every package the Makefile installs with --no-deps, under the same name
    makefile = (ROOT / "Makefile").read_text()
    wanted = set()
    for line in makefile.splitlines():
        if "--no-deps" in line:
            words = line.split("#")[0].split("--no-deps", 1)[1].split()
            wanted |= {canonicalize_name(Requirement(w).name) for w in words if not w.startswith("-")}
    assert wanted, "no --no-deps installs found in the Makefile"
    installed = set()
    for line in commands:
        if line.startswith("pip install") and "--no-deps" in line:
            words = line.split("--no-deps", 1)[1].split()
            installed |= {canonicalize_name(Requirement(w).name) for w in words if not w.startswith("-") and w != "."}
    assert not wanted - installed, f"postBuild misses what `make setup` installs: {sorted(wanted - installed)}"


def test_readme_has_a_binder_badge_that_opens_the_first_notebook_in_jupyterlab():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"\(https://mybinder\.org/v2/gh/([^/\s]+)/([^/\s]+)/[^?\s]+\?urlpath=([^)\s]+)\)", readme)
    assert match, "README.md has no mybinder.org badge link"
    assert match[3] in ("lab/tree/notebooks/00_start_here.ipynb", "lab%2Ftree%2Fnotebooks%2F00_start_here.ipynb")
    assert (ROOT / "notebooks" / "00_start_here.ipynb").exists()
    owner_repo = f"{match[1]}/{match[2]}"
    if owner_repo.startswith("YOUR-"):  # a placeholder: the README must tell the maintainer to change it
        assert re.search(rf"{re.escape(owner_repo)}.*(replace|change)|(replace|change).*{re.escape(owner_repo)}",
                         readme, re.I), "the README must tell the maintainer to change the placeholder"
    assert re.search(r"ignores[^.]*pyproject\.toml", readme), \
        "the README should say that repo2docker ignores pyproject.toml once binder/ exists"


@pytest.mark.parametrize("name", ["requirements.txt", "runtime.txt", "postBuild"])
def test_binder_files_are_committed_text(name):
    data = (BINDER / name).read_bytes()
    assert data.endswith(b"\n") and b"\r" not in data


def test_binder_start_lets_idle_threads_sleep():
    start = BINDER / "start"
    assert start.exists() and start.stat().st_mode & 0o111, "binder/start must exist and be executable"
    text = start.read_text()
    assert "export OMP_WAIT_POLICY=PASSIVE" in text and text.rstrip().endswith('exec "$@"')


def test_the_venv_kernel_starts_with_passive_openmp_threads():
    """`make setup` writes OMP_WAIT_POLICY=PASSIVE into the venv's kernelspec: read before torch starts,
    so it must be in the kernel's environment, not set by the lab's import."""
    import json
    import sys
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    assert json.loads(spec.read_text()).get("env", {}).get("OMP_WAIT_POLICY") == "PASSIVE", spec
