"""JupyterLab in Debian's Chromium, driven by Playwright: what the browser tests and ``kdlab bench widgets`` share.

``jupyterlab(root)`` serves a copy of the notebooks on 127.0.0.1 (a free port, no token, autosave
off, every cell rendered), ``chromium()`` launches ``/usr/bin/chromium`` headless (never a browser
Playwright downloads), and ``open_and_run_all`` opens a notebook in its own workspace, runs Run ->
Run All Cells through the menu and waits for the kernel to go idle. The helpers below find a
panel by its bold header and read or move its controls as a person would.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from ..core import config

CHROMIUM = Path(os.environ.get("KDLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage"]
RUN_ALL_TIMEOUT_S = 420
WIDGET_TIMEOUT_MS = 120_000


class BrowserUnavailable(RuntimeError):
    """Chromium or Playwright is not installed; the message says how to install it."""


class BrowserTimeout(RuntimeError):
    """Something in the page did not happen in time; the message says what."""


@contextmanager
def chromium():
    """Debian's Chromium, headless, through Playwright."""
    if not CHROMIUM.exists():
        raise BrowserUnavailable(f"{CHROMIUM} is missing: `apt-get install -y chromium` (Debian)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserUnavailable("Playwright for Python is missing: `.venv/bin/pip install playwright` "
                                 "(no `playwright install`: the lab uses Debian's Chromium)") from None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, method: str = "GET"):
    """A call of the Jupyter server's REST API, its JSON answer (None when empty)."""
    req = urllib.request.Request(base + path, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


@contextmanager
def jupyterlab(root: Path, *, quick: bool = True, env: dict | None = None):
    """JupyterLab on 127.0.0.1 serving a copy of ``notebooks/`` under ``root``; yields its base URL.

    The copy means nothing a page does can be autosaved into the committed notebooks; ``quick``
    sets ``KDLAB_QUICK=1`` for its kernels."""
    root = Path(root)
    served = root / "notebooks"
    served.mkdir(parents=True, exist_ok=True)
    for nb in (config.REPO_ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, served / nb.name)
    settings = root / "user-settings" / "@jupyterlab"
    for plugin, values in {"docmanager-extension/plugin": {"autosave": False},   # never write a notebook
                           "notebook-extension/tracker": {"autoStartDefaultKernel": True,
                                                          # every cell in the page, not just those in view
                                                          "windowingMode": "none"}}.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = _free_port()
    jupyter = Path(sys.executable).parent / "jupyter"
    cmd = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--IdentityProvider.token=",
           "--ServerApp.password=", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--ServerApp.disable_check_xsrf=True",  # loopback only: lets us shut kernels down by the REST API
           f"--LabApp.user_settings_dir={root / 'user-settings'}", f"--LabApp.workspaces_dir={root / 'workspaces'}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "JUPYTER_CONFIG_DIR": str(root / "jupyter-config"), "PYTHONUNBUFFERED": "1",
           **({"KDLAB_QUICK": "1"} if quick else {}), **(env or {})}
    log_path = root / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    api(base, "/api/status")
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"JupyterLab did not start: {log_path.read_text()[-2000:]}") from None
                    time.sleep(0.3)
            yield base
        finally:
            try:
                for kernel in api(base, "/api/kernels"):
                    api(base, f"/api/kernels/{kernel['id']}", method="DELETE")
            except OSError:
                pass
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Ran:
    """A notebook open in a browser page after Run All Cells."""

    def __init__(self, name: str, page, errors: list[str], shots: Path | None = None):
        self.name, self.page, self.errors = name, page, errors
        self.shots = shots or config.REPO_ROOT / "build" / "screenshots"

    def panel(self, description: str):
        """The widget panel whose bold header reads ``description``."""
        loc = self.page.locator(".widget-vbox").filter(has=self.page.locator("b", has_text=description)).last
        loc.wait_for(state="attached", timeout=WIDGET_TIMEOUT_MS)
        loc.evaluate("e => e.scrollIntoView({block: 'center'})")
        loc.wait_for(timeout=WIDGET_TIMEOUT_MS)
        return loc

    def shot(self, what: str, locator=None):
        self.shots.mkdir(parents=True, exist_ok=True)
        (locator or self.page).screenshot(path=str(self.shots / f"{self.name}-{what}.png"))


_workspaces = itertools.count()


def code_prompts(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())""")


def kernel_status(page) -> str | None:
    loc = page.locator(".jp-Notebook-ExecutionIndicator")
    return loc.first.get_attribute("data-status") if loc.count() else None


def wait_until_idle(page, name: str, timeout_s: float = RUN_ALL_TIMEOUT_S):
    """Wait until no cell is queued or running and the kernel is idle."""
    deadline = time.monotonic() + timeout_s
    while True:
        prompts = code_prompts(page)
        if not any("*" in p for p in prompts) and kernel_status(page) == "idle":
            time.sleep(1.0)  # widget views render after the last reply
            if not any("*" in p for p in code_prompts(page)) and kernel_status(page) == "idle":
                return
        if time.monotonic() > deadline:
            raise BrowserTimeout(f"{name}: Run All Cells did not finish in {timeout_s:.0f} s; prompts {prompts}")
        time.sleep(0.5)


def wait_for_kernel(base: str, page, name: str):
    """Wait until the notebook's kernel is idle, on the server (its session) and in the page."""
    deadline = time.monotonic() + 90
    while not any(sess["path"].endswith(f"{name}.ipynb") and sess["kernel"]["execution_state"] == "idle"
                  for sess in api(base, "/api/sessions")):
        if time.monotonic() > deadline:
            raise BrowserTimeout(f"{name}: its kernel did not start: sessions {api(base, '/api/sessions')}")
        time.sleep(0.5)
    page.wait_for_function("() => document.querySelector('.jp-Notebook-ExecutionIndicator')"
                           " && document.querySelector('.jp-Notebook-ExecutionIndicator').dataset.status === 'idle'",
                           timeout=60_000)
    time.sleep(1.0)


def close_sessions(base: str):
    for session in api(base, "/api/sessions"):
        api(base, f"/api/sessions/{session['id']}", method="DELETE")


def open_and_run_all(base: str, browser, name: str, *, timeout_s: float = RUN_ALL_TIMEOUT_S) -> Ran:
    """Open ``notebooks/NAME.ipynb`` in a page of its own and run Run -> Run All Cells through the menu."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # a workspace of its own, so JupyterLab does not reopen the notebooks of earlier pages beside it
    page.goto(f"{base}/lab/workspaces/{name}-{next(_workspaces)}/tree/notebooks/{name}.ipynb")
    page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(state="attached", timeout=60_000)
    select = page.locator(".jp-Dialog button", has_text="Select")   # "Select Kernel", if JupyterLab asks
    try:
        select.wait_for(timeout=3_000)
        select.click()
    except PlaywrightTimeout:   # no dialog: the kernel was chosen without asking
        pass
    wait_for_kernel(base, page, name)
    for attempt in (1, 2):   # a Run All that comes while the page is still connecting to its kernel runs nothing
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:  # started: some cell queued, running or run
            page.wait_for_function("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                                   ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))", timeout=30_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                Ran(name, page, errors).shot("run-all-did-not-start")
                raise
    wait_until_idle(page, name, timeout_s)
    return Ran(name, page, errors)


# ------------------------------------------------------------------ a panel's controls

def span(panel, cls: str) -> str:
    """The text of the panel's first ``kd-CLS`` span (where a readout shows a number)."""
    return panel.locator(f".kd-{cls}").first.inner_text().strip()


def slider(panel, label: str):
    named = panel.page.locator("label", has_text=re.compile(rf"^{re.escape(label)}$"))
    return panel.locator(".widget-slider").filter(has=named)


def selected_option(select) -> str:
    """A menu's chosen entry as the reader sees it (ipywidgets draws its spaces as no-break spaces)."""
    return select.evaluate("s => s.options[s.selectedIndex].text").replace("\xa0", " ")


def press(locator, key: str, times: int):
    """Press ``key`` ``times`` times on a focused control, as fast as the browser takes them."""
    locator.focus()
    for _ in range(times):
        locator.press(key)


def settle(ran: Ran):
    """Wait until the kernel has handled what the browser sent."""
    time.sleep(0.5)
    ran.page.wait_for_function("() => document.querySelector('.jp-Notebook-ExecutionIndicator')"
                               ".dataset.status === 'idle'", timeout=WIDGET_TIMEOUT_MS)
    time.sleep(0.5)


def plotly_data(panel) -> list[dict]:
    """The traces a panel's plotly figure draws now (``x``, ``y``, ``z``, ``name`` of each), read from the page."""
    return panel.locator(".js-plotly-plot").first.evaluate(
        "gd => gd.data.map(t => ({name: t.name ?? null, x: t.x ?? null, y: t.y ?? null, z: t.z ?? null}))")
