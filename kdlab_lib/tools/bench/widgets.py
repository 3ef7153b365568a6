"""``kdlab bench widgets``: how fast the slider panels answer in a real browser.

JupyterLab on 127.0.0.1 with Debian's Chromium through Playwright (``tools.browser``) runs a small
notebook that builds the slider panels on chapter 01's full data (the teacher's logits on all
10,000 test digits; the GPT-2 teacher and the wiki student for the next-token explorer). For each
panel it measures, in the page's own clock (``performance.now()``):

- **key press -> figure**: ArrowRight on the slider, then the first ``plotly_afterplot`` event of the
  panel's graph whose data equals the library's values for the new setting (computed here, from
  the same logits); median and 95th percentile over the presses;
- **updates during a one-second drag**: figure updates while the mouse drags the handle for a second;
- **settle**: from the mouse's release to the figure showing the final value.

A panel drawn with matplotlib (the lab before plotly) has no graph: there the figure's PNG changing
counts as the update, and the readout is checked instead of the figure's data. Writes
``data/results/widgets.json`` (per panel ``median_ms``, ``p95_ms``, ``updates_during_drag``,
``settle_ms``). Targets (for the temperature explorer and the dark-knowledge map): median at most
100 ms, 95th percentile at most 200 ms, at least 5 updates in a one-second drag, settle at most 200 ms.
"""
from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
import torch

from ...core import config, losses, metrics, models, store, text
from .. import browser as kb

TARGETS = {"median_ms": 100, "p95_ms": 200, "updates_during_drag": 5, "settle_ms": 200}
TARGETED = ("Temperature explorer", "Dark-knowledge map")
PRESSES = 20

CELLS = [
    "import torch\nfrom kdlab_lib import config, datasets, metrics, models, text, widgets\nconfig.set_threads()\n"
    "teacher = models.load_teacher('mnist', device='cpu')\ntest = datasets.load_mnist('test')\n"
    "logits = metrics.predict(teacher, test)\nx, y = test.tensors",
    "widgets.TemperatureExplorer(logits, x, y)",
    "widgets.DarkKnowledgeMap(logits, y)",
    "damped = logits.clone()\ndamped[:, 3] -= 6.0   # a student that has never seen a 3\n"
    "widgets.BiasPanel(damped, y, cls=3)",
    "lms = {'teacher': models.load_teacher('gpt2-tiny', device='cpu'),\n"
    "       'student': models.load_teacher('gpt2-wiki-student', device='cpu')}\n"
    "widgets.NextTokenExplorer(lms, text.load_tokenizer('bpe'))",
]

LISTEN = """(panel) => {
  const gd = panel.querySelector('.js-plotly-plot');
  const log = [], readouts = [];
  const readout = [...panel.querySelectorAll('.widget-html')].find(e => e.querySelector('[class^="kd-"]'));
  if (readout) new MutationObserver(() => readouts.push(performance.now()))
      .observe(readout, {subtree: true, childList: true, characterData: true});
  panel.__kd_readouts = readouts;
  if (gd) {
    gd.on('plotly_afterplot', () => log.push({t: performance.now(), data: gd.data.map(
        tr => ({x: tr.x ? Array.from(tr.x) : null, y: tr.y ? Array.from(tr.y) : null,
                z: tr.z ? Array.from(tr.z, r => Array.from(r)) : null}))}));
  } else {   // matplotlib: a new PNG in the panel's output area is the update
    const out = panel.querySelector('.widget-output');
    const isImage = n => n.nodeName === 'IMG' || (n.querySelector && n.querySelector('img'));
    new MutationObserver(muts => {
      if (muts.some(m => [...m.addedNodes].some(isImage))) log.push({t: performance.now(), data: null});
    }).observe(out, {subtree: true, childList: true});
  }
  panel.__kd_log = log;
  return gd ? 'plotly' : 'png';
}"""


class Expected:
    """The library's values for a panel at the setting its readout shows."""

    def __init__(self):
        from ...core import datasets
        teacher = models.load_teacher("mnist", device="cpu")
        test = datasets.load_mnist("test")
        self.logits, self.labels = metrics.predict(teacher, test), test.tensors[1]
        self.damped = self.logits.clone()
        self.damped[:, 3] -= 6.0
        self.lms = {name: models.load_teacher(name, device="cpu") for name in ("gpt2-tiny", "gpt2-wiki-student")}
        self.tok = text.load_tokenizer("bpe")
        self._next_logits = None

    def matches(self, description: str, panel, data, value: float) -> bool:
        """Does the figure's ``data`` show what the library gives at the slider's ``value`` (as shown, to
        2 decimals, so within what [value - 0.005, value + 0.005] gives)?"""
        grid = [value - 0.005 + 0.001 * k for k in range(11)]
        if description.startswith("Temperature"):
            i = int(re.match(r"#(\d+):", kb.selected_option(panel.locator("select")))[1])
            rows = [losses.soften(self.logits[i:i + 1].double(), t)[0].tolist() for t in grid]
            return _within(data[0]["y"], rows, 2e-4)
        if description.startswith("Dark"):
            rows = []
            for t in grid:
                m = metrics.class_similarity(self.logits, self.labels, t)
                m.fill_diagonal_(float("nan"))
                rows.append([v for r in m.tolist() for v in r])
            shown = [float("nan") if v is None else v for r in data[0]["z"] for v in r]
            return _within(shown, rows, 2e-4)
        if description.startswith("Raise"):
            return abs(data[2]["x"][0] - value) < 1e-9
        if description.startswith("Next-token"):
            logits = self._prompt_logits()
            rows = [losses.soften(logits, t)[0].sort(descending=True).values[:8].tolist() for t in grid]
            return _within(data[0]["x"], rows, 2e-4)
        raise ValueError(f"no expected values for {description!r}")

    @torch.no_grad()
    def _prompt_logits(self):
        if self._next_logits is None:
            prompt = "ROMEO:\nO, she doth teach the"
            ids = [text.separator_id(self.tok)] + self.tok(prompt, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ids])                                                  # (1, S)
            self._next_logits = self.lms["gpt2-tiny"](input_ids=ids).logits[:, -1].float()
        return self._next_logits


def _within(shown, candidates, tol: float) -> bool:
    """Every shown number lies between the smallest and largest candidate value (+- tol), NaN for NaN."""
    if shown is None or len(shown) != len(candidates[0]):
        return False
    for k, v in enumerate(shown):
        col = [c[k] for c in candidates]
        if any(c != c for c in col):            # NaN: a hidden cell
            if v == v:
                return False
            continue
        if not min(col) - tol <= v <= max(col) + tol:
            return False
    return True


PANELS = {  # header -> (slider label, the drag from -> to, as fractions of the track)
    "Temperature explorer": ("T", (0.2, 0.8)),
    "Dark-knowledge map": ("T", (0.2, 0.8)),
    "Raise the omitted class's bias": ("bias of 3", (0.2, 0.8)),
    "Next-token explorer": ("T", (0.2, 0.8)),
}


def _events(panel, start: int = 0) -> list[dict]:
    return panel.evaluate("(p, n) => p.__kd_log.slice(n)", start)


def _n_events(panel) -> int:
    return panel.evaluate("p => p.__kd_log.length")


def _readout(panel, label: str) -> float:
    return float(kb.slider(panel, label).locator(".widget-readout").inner_text().strip())


def _wait_for_match(panel, description, label, expected, kind, start: int, timeout_s: float = 5.0):
    """The page's time of the first update after the ``start``-th whose data is the library's at the slider's
    value, or None. The page timestamps its own events; here we only look every 100 ms, so the measuring
    takes no CPU from the browser or the kernel while they answer."""
    deadline, seen = time.monotonic() + timeout_s, start
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if _n_events(panel) == seen:
            continue
        new = _events(panel, seen)
        seen += len(new)
        value = _readout(panel, label)
        for e in new:
            if kind == "png" or expected.matches(description, panel, e["data"], value):
                return e["t"]
    return None


def measure_panel(ran, description: str, expected: Expected, presses: int = PRESSES) -> dict:
    label, (low, high) = PANELS[description]
    panel = ran.panel(description)
    kind = panel.evaluate(LISTEN)
    handle = kb.slider(panel, label).locator(".noUi-handle")
    latencies, readouts, missed = [], [], 0
    for k in range(presses):
        key = "ArrowRight" if (k // 5) % 2 == 0 else "ArrowLeft"    # five steps up, five down: stays in range
        handle.focus()
        n = _n_events(panel)
        t0 = panel.evaluate("() => performance.now()")
        handle.press(key)
        t = _wait_for_match(panel, description, label, expected, kind, n)
        if t is None:
            missed += 1
        else:
            latencies.append(t - t0)
            first_readout = panel.evaluate("(p, t0) => p.__kd_readouts.find(t => t > t0) ?? null", t0)
            if first_readout is not None:
                readouts.append(first_readout - t0)
        time.sleep(0.15)   # one press at a time: the next waits for this one's answer
    # one second of dragging, from wherever the handle is to the far end of the track
    track = kb.slider(panel, label).locator(".noUi-target").bounding_box()
    box = handle.bounding_box()
    x0, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    frac = (x0 - track["x"]) / track["width"]
    x1 = track["x"] + (high if frac < 0.5 else low) * track["width"]
    page = ran.page
    page.mouse.move(x0, y)
    page.mouse.down()
    n = _n_events(panel)
    t_down = panel.evaluate("() => performance.now()")
    moves = 30
    for m in range(1, moves + 1):   # a move every ~33 ms
        page.mouse.move(x0 + (x1 - x0) * m / moves, y)
        time.sleep(1.0 / moves)
    t_up = panel.evaluate("() => performance.now()")
    page.mouse.up()
    time.sleep(2.0)   # anything still coming
    events = _events(panel, n)
    during = sum(1 for e in events if t_down < e["t"] <= t_up)
    value = _readout(panel, label)
    final = next((e for e in reversed(events) if kind == "png" or
                  expected.matches(description, panel, e["data"], value)), None)
    stale_after = events and final is not events[-1]   # a later update showed something else: a replay
    settle = None if final is None or stale_after else max(0.0, final["t"] - t_up)
    ran.shot(f"bench-{description.split()[0].lower()}", panel)
    return {"figure": kind, "presses": presses, "answered": len(latencies), "missed": missed,
            "median_ms": round(statistics.median(latencies), 1) if latencies else None,
            "p95_ms": round(_percentile(latencies, 95), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None,
            "readout_median_ms": round(statistics.median(readouts), 1) if readouts else None,
            "updates_during_drag": during, "updates_after_release": sum(1 for e in events if e["t"] > t_up),
            "settle_ms": None if settle is None else round(settle, 1)}


def _percentile(values, q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def verdict(rows: dict) -> list[str]:
    lines = []
    for name in TARGETED:
        r = rows.get(name)
        if not r or r.get("median_ms") is None:
            lines.append(f"{name}: not measured")
            continue
        checks = [f"median {r['median_ms']:.0f} ms (<= {TARGETS['median_ms']})" +
                  (" met" if r["median_ms"] <= TARGETS["median_ms"] else " MISSED"),
                  f"p95 {r['p95_ms']:.0f} ms (<= {TARGETS['p95_ms']})" +
                  (" met" if r["p95_ms"] <= TARGETS["p95_ms"] else " MISSED"),
                  f"{r['updates_during_drag']} updates in a 1 s drag (>= {TARGETS['updates_during_drag']})" +
                  (" met" if r["updates_during_drag"] >= TARGETS["updates_during_drag"] else " MISSED"),
                  f"settle {r['settle_ms']} ms (<= {TARGETS['settle_ms']})" +
                  (" met" if r["settle_ms"] is not None and r["settle_ms"] <= TARGETS["settle_ms"] else " MISSED")]
        lines.append(f"{name}: " + "; ".join(checks))
    return lines


def bench_widgets(out: Path | None = None, presses: int = PRESSES, quick: bool | None = None) -> dict:
    """Run the measurements and write ``data/results/widgets.json`` (the cache in quick mode)."""
    run = store.BenchRun("widgets")
    expected = Expected()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="kdlab-widgets-") as tmp, kb.chromium() as browser:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        root = Path(tmp)
        (root / "notebooks").mkdir()
        nbformat.write(nb, root / "notebooks" / "widgets_bench.ipynb")
        with kb.jupyterlab(root, quick=config.QUICK if quick is None else quick) as base:
            ran = kb.open_and_run_all(base, browser, "widgets_bench")
            for description in PANELS:
                rows[description] = measure_panel(ran, description, expected, presses)
                print(f"{description}: {json.dumps(rows[description])}", flush=True)
    path, results = run.write({"presses": presses, "chromium": str(kb.CHROMIUM), "targets": TARGETS,
                               "panels": rows, "verdict": verdict(rows)}, out)
    print(f"results written to {path}")
    print("\n".join(results["verdict"]))
    return results
