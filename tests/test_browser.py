"""Browser tests: the notebooks as a person uses them, in JupyterLab driven by Playwright.

One JupyterLab server (127.0.0.1, a free port, no token, ``KDLAB_QUICK=1``) serves a copy of the
notebooks for the whole session, so nothing a test does can be autosaved into the committed
notebooks. Chromium is Debian's ``/usr/bin/chromium`` (never ``playwright install``); the driver
(``kdlab_lib.tools.browser``) is shared with ``kdlab bench widgets``. For each
notebook the test runs Run → Run All Cells through the menu, waits for the kernel to go idle, and
checks every code cell ran with no error output and no page error. Then it moves each chapter's
main widget with the mouse or the keyboard and checks that the numbers shown become the values
``kdlab_lib`` itself computes for the new setting. Screenshots go to ``build/screenshots/``.

Where Chromium or Playwright is missing the tests skip with the reason; under CI (``CI=true``)
they fail instead, since CI installs Chromium first (``.ci/run``).
"""
from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from kdlab_lib.tools import browser as kb
from kdlab_lib.tools.browser import Ran, code_prompts, press, selected_option, settle, slider, span

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
WIDGET_TIMEOUT_MS = kb.WIDGET_TIMEOUT_MS


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium():
    try:
        with kb.chromium() as browser:
            yield browser
    except kb.BrowserUnavailable as missing:
        _unavailable(str(missing))


@pytest.fixture(scope="session")
def lab(tmp_path_factory, chromium):
    """JupyterLab on 127.0.0.1 serving a copy of notebooks/ (quick mode); yields its base URL."""
    with kb.jupyterlab(tmp_path_factory.mktemp("lab")) as base:
        yield base
        _current.clear()  # its page closes with the browser


_current: dict = {}


def _close_current(lab):
    old = _current.pop("ran", None)
    if old is not None:
        old.page.close()
        kb.close_sessions(lab)


def open_and_run_all(lab, chromium, name: str) -> Ran:
    """Open the notebook (closing the one open before), Run All Cells, wait until the kernel is idle."""
    _close_current(lab)
    ran = kb.open_and_run_all(lab, chromium, name)
    _current["ran"] = ran
    return ran


TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^[\w.]*(Error|Exception)\b.*:|^-{40,}$", re.M)


def error_outputs(page) -> list[str]:
    """Error outputs, in cells and in widgets' Output areas. JupyterLab renders a cell's error as
    stderr text (``application/vnd.jupyter.stderr``), like tqdm bars and warnings: told apart by
    the traceback IPython prints."""
    texts = page.evaluate("""() => [...document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"], '
        + '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.innerText)""")
    return [t[:3000] for t in texts if TRACEBACK.search(t)]


def assert_clean(ran: Ran):
    errors = error_outputs(ran.page)
    assert not errors, f"{ran.name}: error output in the notebook:\n" + "\n".join(errors)
    assert not ran.errors, f"{ran.name}: page errors: {ran.errors}"
    body = ran.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").inner_text()
    assert "Error displaying widget" not in body, f"{ran.name}: a widget failed to display"


# ------------------------------------------------------------------ every notebook

def check_runs_all_cells(lab, chromium, name: str) -> Ran:
    ran = open_and_run_all(lab, chromium, name)
    ran.shot("after-run-all")
    assert_clean(ran)   # first: an error stops Run All, and its traceback says why
    prompts = code_prompts(ran.page)
    assert prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), f"{name}: cells not all run: {prompts}"
    return ran


# ------------------------------------------------------------------ helpers for widgets

def wait_for_span(panel, cls: str, predicate, what: str):
    deadline = time.monotonic() + WIDGET_TIMEOUT_MS / 1000
    while True:
        text = span(panel, cls)
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: .kd-{cls} still reads {text!r}")
        time.sleep(0.25)


def drag_slider(ran, panel, label: str, fraction: float):
    """Drag the slider's handle with the mouse to ``fraction`` of its track; returns the handle."""
    handle = slider(panel, label).locator(".noUi-handle")
    track = slider(panel, label).locator(".noUi-target").bounding_box()
    box = handle.bounding_box()
    ran.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    ran.page.mouse.down()
    ran.page.mouse.move(track["x"] + fraction * track["width"], box["y"] + box["height"] / 2, steps=8)
    ran.page.mouse.up()
    settle(ran)
    return handle


def dropdown(panel, label: str):
    """The ``<select>`` of the panel's dropdown described by ``label``."""
    return panel.locator(".widget-dropdown").filter(
        has=panel.page.locator("label", has_text=re.compile(rf"^{re.escape(label)}$"))).locator("select")


def type_into_readout(panel, label: str, value: str):
    """Type a value into a slider's readout, as a person can, and press Enter."""
    readout = slider(panel, label).locator(".widget-readout")
    readout.click()
    readout.fill(value)
    readout.press("Enter")


@contextmanager
def kernel_threads():
    """Run the library here on the kernel's thread count (``config.set_threads``, as every notebook does):
    the same sums in the same order, so a model trained here is the one the kernel trained."""
    from kdlab_lib import config
    threads = torch.get_num_threads()
    config.set_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _entropy_and_p(logits_row: torch.Tensor, label: int, t: float) -> tuple[float, float]:
    from kdlab_lib import losses, metrics
    p = losses.soften(logits_row[None].double(), t)[0]
    return float(metrics.entropy(p)), float(p[label])


@pytest.fixture(scope="module")
def mnist_teacher_test_logits():
    from kdlab_lib import datasets, metrics, models
    teacher = models.load_teacher("mnist", device="cpu")
    test = datasets.load_mnist("test")
    return metrics.predict(teacher, test), test.tensors[1]


def check_temperature_explorer(ran: Ran, logits, labels):
    """Press ArrowRight on T five times: entropy and p(true) must be the library's at the new T."""
    panel = ran.panel("Temperature explorer")
    label_text = selected_option(panel.locator("select"))
    i = int(re.match(r"#(\d+):", label_text)[1])
    t0 = float(span(panel, "temperature"))
    press(slider(panel, "T").locator(".noUi-handle"), "ArrowRight", 5)
    settle(ran)
    t_text = wait_for_span(panel, "temperature", lambda s: float(s) > t0 + 0.05, "temperature explorer")
    time.sleep(1.0)  # the five presses arrive one by one: read the last
    settle(ran)
    t_text = span(panel, "temperature")
    assert slider(panel, "T").locator(".widget-readout").inner_text().strip() == t_text
    t = float(t_text)
    # one key press is one step of 0.01 in log10(T): five of them multiply T by about 10**0.05
    # (the slider first snaps its start to its grid of steps, so within one step of that)
    assert t0 * 10 ** 0.039 <= t <= t0 * 10 ** 0.061, f"T went from {t0} to {t} after five ArrowRight presses"
    # T is shown to 2 decimals: the entropy and p(true) shown must lie within what [t - 0.005, t + 0.005] gives
    grid = [t - 0.005 + 0.001 * k for k in range(11)]
    label = int(labels[i])
    ents, ps = zip(*(_entropy_and_p(logits[i], label, x) for x in grid))
    ent, p_true = float(span(panel, "entropy")), float(span(panel, "p-true"))
    assert min(ents) - 6e-4 <= ent <= max(ents) + 6e-4, \
        f"digit #{i} at T={t}: shown entropy {ent}, library {ents[5]:.4f}"
    assert min(ps) - 6e-4 <= p_true <= max(ps) + 6e-4, \
        f"digit #{i} at T={t}: shown p(true) {p_true}, library {ps[5]:.4f}"
    # the figure's bars (read from the plotly graph in the page) are the library's probabilities
    from kdlab_lib import losses
    bars = kb.plotly_data(panel)[0]["y"]
    rows = [losses.soften(logits[i][None].double(), x)[0].tolist() for x in grid]
    for k, v in enumerate(bars):
        assert min(r[k] for r in rows) - 2e-4 <= v <= max(r[k] for r in rows) + 2e-4, \
            f"digit #{i} at T={t}: the bar of class {k} shows {v}, library {rows[5][k]:.4f}"
    # and the number really moved with T (not a stale readout)
    ent0, _ = _entropy_and_p(logits[i], label, t0)
    assert abs(ent - ent0) > 1e-3 or abs(t - t0) < 1e-9
    ran.shot("temperature-explorer", panel)
    return panel, i, t


# ------------------------------------------------------------------ chapter 00

def test_00_runs_all_cells_in_jupyterlab(lab, chromium):
    check_runs_all_cells(lab, chromium, "00_start_here")


def test_00_temperature_explorer_follows_the_keyboard(lab, chromium, mnist_teacher_test_logits):
    ran = open_and_run_all(lab, chromium, "00_start_here")
    logits, labels = mnist_teacher_test_logits
    check_temperature_explorer(ran, logits, labels)
    assert_clean(ran)


def output_texts(page) -> list[str]:
    """The text of every output but stderr and progress bars, with durations ("12 s") masked. A plotly
    figure's own text (tick labels, drawn asynchronously) is left out: its numbers are in the readouts."""
    texts = page.evaluate("""() => [...document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]
        .filter(e => e.dataset.mimeType !== 'application/vnd.jupyter.stderr'
                     && !e.querySelector('.widget-hprogress, .widget-progress, progress'))
        .map(e => [...e.querySelectorAll('.js-plotly-plot')]
            .reduce((text, plot) => text.replace(plot.innerText, ''), e.innerText))""")
    return [re.sub(r"\b\d+(\.\d+)? s\b", "<seconds> s", t) for t in texts]


def test_00_restart_and_run_all_gives_the_same_numbers(lab, chromium):
    ran = open_and_run_all(lab, chromium, "00_start_here")

    def restart_and_run_all():
        ran.page.get_by_role("menuitem", name="Kernel", exact=True).click()
        ran.page.get_by_role("menuitem", name=re.compile(r"^Restart Kernel and Run All Cells")).click()
        ran.page.locator(".jp-Dialog button.jp-mod-accept").click()   # "Restart"
        ran.page.wait_for_function("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                                   ".some(e => e.textContent.includes('*'))", timeout=60_000)
        kb.wait_until_idle(ran.page, "00_start_here (restarted)")
        return output_texts(ran.page)

    first = restart_and_run_all()
    assert any("distilled student (100-100)" in t for t in first), "the first distillation's table is missing"
    second = restart_and_run_all()
    assert second == first, "restart and run all gave different outputs:\n" + "\n".join(
        f"- {a!r}\n+ {b!r}" for a, b in zip(first, second) if a != b)
    assert_clean(ran)
    ran.shot("after-restart-and-run-all")


# ------------------------------------------------------------------ chapter 01

def test_01_runs_all_cells_in_jupyterlab(lab, chromium):
    check_runs_all_cells(lab, chromium, "01_mnist_soft_labels")


def test_01_temperature_explorer_follows_the_keyboard_and_the_digit_menu(lab, chromium, mnist_teacher_test_logits):
    ran = open_and_run_all(lab, chromium, "01_mnist_soft_labels")
    logits, labels = mnist_teacher_test_logits
    panel, i, t = check_temperature_explorer(ran, logits, labels)
    # choose another digit from the menu: the numbers must be that digit's
    select = panel.locator("select")
    options = select.evaluate("s => [...s.options].map(o => o.text)")
    other = next(o for o in options if not o.startswith(f"#{i}:"))
    j = int(re.match(r"#(\d+):", other)[1])
    select.select_option(label=other)
    settle(ran)
    ent_j, p_j = _entropy_and_p(logits[j], int(labels[j]), t)
    wait_for_span(panel, "entropy", lambda s: abs(float(s) - ent_j) < 2e-3, f"entropy of digit #{j}")
    assert abs(float(span(panel, "p-true")) - p_j) < 2e-3
    ran.shot("temperature-explorer-other-digit", panel)
    assert_clean(ran)


def check_dark_knowledge_map(panel, logits, labels, what: str) -> float:
    """The T shown, and the most confusable pairs and their similarities shown, against
    ``metrics.class_similarity`` / ``confusable_pairs`` at that T (shown to 2 decimals: within what
    [t - 0.005, t + 0.005] gives)."""
    from kdlab_lib import metrics
    t = float(span(panel, "temperature"))
    assert slider(panel, "T").locator(".widget-readout").inner_text().strip() == f"{t:.2f}"
    shown = [(int(a), int(b), float(v)) for a, b, v in
             re.findall(r"(\d)-(\d) \(([\d.]+)\)", panel.locator(".widget-html").filter(
                 has=panel.page.locator(".kd-pair")).first.inner_text())]
    grid = [metrics.confusable_pairs(metrics.class_similarity(logits, labels, t - 0.005 + 0.001 * k))
            for k in range(11)]
    assert len(shown) == len(grid[5]), f"{what}: shown {shown}, library {grid[5]}"
    assert any([p[:2] for p in shown] == [p[:2] for p in g] for g in grid), \
        f"{what}, T={t}: pairs shown {shown}, library {[p[:2] for p in grid[5]]}"
    for n, (a, b, v) in enumerate(shown):
        values = [g[n][2] for g in grid if g[n][:2] == (a, b)]
        assert min(values) - 6e-4 <= v <= max(values) + 6e-4, \
            f"{what}, T={t}: similarity of {a}-{b} shown {v}, library {grid[5][n][2]:.4f}"
    # the heat map itself (the plotly graph's data in the page): every cell is the library's at that T
    z = kb.plotly_data(panel)[0]["z"]
    mats = [metrics.class_similarity(logits, labels, t - 0.005 + 0.001 * k) for k in range(11)]
    for r in range(len(z)):
        for c in range(len(z)):
            if r == c:
                assert z[r][c] is None, "the diagonal is hidden"
                continue
            cell = [float(m[r, c]) for m in mats]
            assert min(cell) - 2e-4 <= z[r][c] <= max(cell) + 2e-4, f"{what}, T={t}: cell {r}-{c} shows {z[r][c]}"
    return t


def test_01_dark_knowledge_map_follows_the_mouse_and_the_keyboard(lab, chromium, mnist_teacher_test_logits):
    ran = open_and_run_all(lab, chromium, "01_mnist_soft_labels")
    logits, labels = mnist_teacher_test_logits
    panel = ran.panel("Dark-knowledge map")
    t0 = check_dark_knowledge_map(panel, logits, labels, "as the notebook left it")
    # the mouse: drag the T handle to 80 % of the track
    handle = drag_slider(ran, panel, "T", 0.8)
    wait_for_span(panel, "temperature", lambda s: float(s) > 2 * t0, "dark-knowledge map after a drag")
    settle(ran)
    t1 = check_dark_knowledge_map(panel, logits, labels, "after a drag")
    ran.shot("dark-knowledge-map-dragged", panel)
    # the keyboard, fast: twelve ArrowLeft presses, each a new T and a recomputed map, none may leave an error
    press(handle, "ArrowLeft", 12)
    settle(ran)
    wait_for_span(panel, "temperature", lambda s: float(s) < t1, "dark-knowledge map after ArrowLeft")
    time.sleep(1.0)  # the presses arrive one by one: read the last
    settle(ran)
    t2 = check_dark_knowledge_map(panel, logits, labels, "after twelve ArrowLeft presses")
    assert t1 * 10 ** -0.13 <= t2 <= t1 * 10 ** -0.11, f"T went from {t1} to {t2} after twelve ArrowLeft presses"
    ran.shot("dark-knowledge-map-keyboard", panel)
    assert_clean(ran)


def test_01_playground_trains_the_student_the_sliders_ask_for(lab, chromium):
    ran = open_and_run_all(lab, chromium, "01_mnist_soft_labels")
    panel = ran.panel("Distillation playground")
    type_into_readout(panel, "T", "8")
    type_into_readout(panel, "alpha", "0.3")
    settle(ran)
    panel.get_by_role("button", name="Train").click()
    settle(ran)
    wait_for_span(panel, "temperature", lambda s: s == "8", "playground T")
    assert span(panel, "alpha") == "0.3"
    shown_errors, shown_scratch = int(span(panel, "errors")), int(span(panel, "scratch-errors"))

    # the library, run here with the notebook's settings (quick mode), gives the same students
    from kdlab_lib import config, datasets, metrics, models, train
    from kdlab_lib.chapters import ch01_soft_labels as ch01
    with kernel_threads():
        teacher = models.load_teacher("mnist", device="cpu")
        test = datasets.load_mnist("test")
        b = ch01.budget()
        train_set = ch01.transfer_set(b)
        targets = ch01.teacher_targets(teacher, train_set)
        x, y = test.tensors

        def student(t, a):
            cfg = train.DistillConfig(epochs=config.budget(5, 1), lr=3e-3, max_shift=0, seed=0, temperature=t, alpha=a)
            config.seed_everything(0)
            net = models.mlp((30, 30))
            if a == 1.0:
                train.fit(net, train_set, cfg, progress=False)
            else:
                train.distill(net, targets, train_set, cfg, progress=False)
            return metrics.error_count(metrics.predict(net, x), y)

        expected = student(8.0, 0.3)
        expected_scratch = student(4.0, 1.0)  # the scratch baseline: trained once, at the first run's settings
    assert shown_errors == expected, \
        f"T=8, alpha=0.3: the page shows {shown_errors} test errors, the library {expected}"
    assert shown_scratch == expected_scratch
    points = kb.plotly_data(panel)[0]           # the distilled runs: the notebook's default run, then this one
    assert (points["x"][-1], points["y"][-1]) == (8.0, expected), f"the last point drawn is {points}"
    ran.shot("distillation-playground", panel)
    assert_clean(ran)


# ------------------------------------------------------------------ chapter 02

def test_02_runs_all_cells_in_jupyterlab(lab, chromium):
    check_runs_all_cells(lab, chromium, "02_distilbert")


def test_02_loss_mixer_distills_with_the_weights_and_temperature_set(lab, chromium):
    from playwright.sync_api import expect

    from kdlab_lib.chapters import ch02_distilbert as ch02
    ran = open_and_run_all(lab, chromium, "02_distilbert")
    panel = ran.panel("Loss mixer")
    # the keyboard: the weights from the notebook's 5 / 2 / 1 to 1 / 0 / 3 (one press is one step of 0.5)
    for label, key, times, value in (("w_soft", "ArrowLeft", 8, "1.00"), ("w_mlm", "ArrowLeft", 4, "0.00"),
                                     ("w_cos", "ArrowRight", 4, "3.00")):
        press(slider(panel, label).locator(".noUi-handle"), key, times)
        expect(slider(panel, label).locator(".widget-readout")).to_have_text(value)
    # the mouse: drag T's handle from 2 to about 6 (73 % of the track 0.5 .. 8)
    drag_slider(ran, panel, "T", 0.733)
    t = float(slider(panel, "T").locator(".widget-readout").inner_text())
    assert 5.0 <= t <= 7.0, f"T reads {t} after a drag to 73 % of its track"
    panel.get_by_role("button", name="Run").click()
    settle(ran)
    readout = panel.locator(".widget-html").filter(has=ran.page.locator(".kd-teacher-accuracy")).first
    expect(readout).to_contain_text(f"w_soft = 1, w_mlm = 0, w_cos = 3, T = {t:g} →", timeout=WIDGET_TIMEOUT_MS)
    settle(ran)

    # the library, with the notebook's teacher, data and budget (quick mode), at the weights and T set
    with kernel_threads():
        teacher, tok = ch02.load()
        b = ch02.budget()
        train_blocks, val_blocks = ch02.mlm_blocks(tok, "train"), ch02.mlm_blocks(tok, "val", b.val_blocks)
        want_teacher = ch02.mlm_score(teacher, tok, val_blocks)["accuracy"]
        student, _ = ch02.distill(teacher, tok, train_blocks, b, w_soft=1.0, w_mlm=0.0, w_cos=3.0, temperature=t,
                                progress=False)
        want = ch02.mlm_score(student, tok, val_blocks)["accuracy"]
    shown = (span(panel, "accuracy"), span(panel, "teacher-accuracy"))
    assert shown == (f"{want:.3f}", f"{want_teacher:.3f}"), \
        f"1 / 0 / 3, T={t:g}: the page shows student and teacher accuracy {shown}, the library {(want, want_teacher)}"
    assert f"({want / want_teacher:.0%} of it)" in readout.inner_text()
    bars = kb.plotly_data(panel)[0]
    assert bars["y"] and abs(bars["y"][-1] - want) <= 5e-4, f"the last bar shows {bars['y']}, the library {want:.4f}"
    assert bars["x"][-1].startswith(f"1/0/3, T={t:g}"), f"the last bar is labelled {bars['x'][-1]!r}"
    ran.shot("loss-mixer", panel)
    assert_clean(ran)


# ------------------------------------------------------------------ chapter 03

def test_03_runs_all_cells_in_jupyterlab(lab, chromium):
    check_runs_all_cells(lab, chromium, "03_gpt2_logit_kd")


def test_03b_runs_all_cells_in_jupyterlab(lab, chromium):
    check_runs_all_cells(lab, chromium, "03b_beyond_logits")


def test_03_kl_explorer_follows_the_mouse(lab, chromium):
    from kdlab_lib.chapters import ch03_gpt2 as ch03
    ran = open_and_run_all(lab, chromium, "03_gpt2_logit_kd")
    panel = ran.panel("Forward vs reverse KL")
    teacher = ch03.bimodal_logits()

    def check(beta: float, objective: str):
        fit = ch03.fit_gaussian(teacher, beta, steps=300)
        want_mu, want_sigma = float(fit["mu"]), float(fit["sigma"])
        want_between = ch03.mode_mass(fit["student_probs"])
        wait_for_span(panel, "beta", lambda s: abs(float(s) - beta) < 1e-9, f"{objective}: beta")
        settle(ran)
        mu, sigma = float(span(panel, "mu")), float(span(panel, "sigma"))
        between = float(span(panel, "between").rstrip("%")) / 100
        assert abs(mu - want_mu) <= 0.0101 and abs(sigma - want_sigma) <= 0.0101, \
            f"{objective}: shown mu={mu}, sigma={sigma}; library mu={want_mu:.3f}, sigma={want_sigma:.3f}"
        assert abs(between - want_between) <= 0.0101, f"{objective}: shown {between}, library {want_between:.3f}"
        return mu, sigma

    fwd = check(0.0, "forward KL")
    panel.get_by_role("button", name="reverse KL").click()   # ToggleButtons: a click
    settle(ran)
    rev = check(1.0, "reverse KL")
    assert abs(rev[0]) > abs(fwd[0]) + 0.5, "reverse KL should pick one mode"
    ran.shot("kl-explorer-reverse", panel)
    panel.get_by_role("button", name="JSD (β)").click()
    settle(ran)
    type_into_readout(panel, "β", "0.25")
    settle(ran)
    check(0.25, "JSD beta=0.25")
    ran.shot("kl-explorer-jsd", panel)
    assert_clean(ran)


def test_03_next_token_explorer_follows_the_prompt_and_temperature(lab, chromium):
    from kdlab_lib import losses, metrics
    from kdlab_lib.chapters import ch03_gpt2 as ch03
    from kdlab_lib.core.text import separator_id
    ran = open_and_run_all(lab, chromium, "03_gpt2_logit_kd")
    panel = ran.panel("Next-token explorer")
    prompt = "JULIET:\nGood night, good night! parting is such sweet"
    box = panel.locator("textarea")
    box.click()
    box.fill(prompt)
    box.press("Tab")   # the prompt is sent when the box loses focus
    type_into_readout(panel, "T", "0.5")
    settle(ran)
    wait_for_span(panel, "temperature", lambda s: s == "0.50", "next-token explorer T")

    teacher, tok = ch03.load()
    ids = [separator_id(tok)] + tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([ids])).logits[:, -1].double()     # (1, V)
    # the page shows T to two decimals ("0.50"), and the log slider keeps a value on its own grid: the library
    # is checked at both ends of what "0.50" can mean
    ends = [losses.soften(logits, t)[0] for t in (0.495, 0.505)]
    p = losses.soften(logits, 0.5)[0]
    top = int(p.argmax())
    want_token = tok.decode([top])
    p_range = sorted(float(q[top]) for q in ends)
    h_range = sorted(float(metrics.entropy(q)) for q in ends)

    readout = panel.locator(".widget-html").filter(has=ran.page.locator(".kd-temperature")).first.inner_text()
    match = re.search(r"teacher: top (.+?) \((\d+)%\), entropy ([\d.]+) nats", readout)
    assert match, f"no teacher entry in the readout: {readout!r}"
    assert f"{len(ids) - 1} prompt tokens" in readout
    assert match[1] == repr(want_token), f"shown top token {match[1]}, library {want_token!r}"
    assert 100 * p_range[0] - 0.51 <= int(match[2]) <= 100 * p_range[1] + 0.51, \
        f"shown p {match[2]}%, library {p_range} for T in [0.495, 0.505]"
    assert h_range[0] - 0.0051 <= float(match[3]) <= h_range[1] + 0.0051, \
        f"shown entropy {match[3]}, library {h_range} for T in [0.495, 0.505]"
    assert "distilled student: top" in readout and "KL(teacher ‖ distilled student)" in readout
    ran.shot("next-token-explorer", panel)
    assert_clean(ran)


# ------------------------------------------------------------------ chapter 04

def test_04_runs_all_cells_in_jupyterlab(lab, chromium):
    check_runs_all_cells(lab, chromium, "04_self_distillation")


def test_04_noise_panel_trains_at_the_noise_the_slider_shows(lab, chromium):
    from dataclasses import replace

    from kdlab_lib import config, datasets
    from kdlab_lib.chapters import ch04_self_distillation as ch04
    ran = open_and_run_all(lab, chromium, "04_self_distillation")
    panel = ran.panel("Label noise")
    wait_for_span(panel, "noise", lambda s: s == "30%", "the notebook's first run")
    press(slider(panel, "label noise").locator(".noUi-handle"), "ArrowRight", 2)   # 30 % -> 50 %
    settle(ran)
    assert slider(panel, "label noise").locator(".widget-readout").inner_text().strip() == "50%"
    panel.get_by_role("button", name="Train").click()
    settle(ran)
    wait_for_span(panel, "noise", lambda s: s == "50%", "noise panel after Train")
    shown = {k: span(panel, k) for k in ("gen0", "gen1", "ensemble", "agreement")}

    # the library, with the notebook's data and budget (quick mode), at 50 % flipped labels
    with kernel_threads():
        b = ch04.notebook_budget()
        train_set = datasets.take(datasets.load_mnist("train"), b.n_train, seed=0)
        test_set = datasets.take(datasets.load_mnist("test"), b.n_test, seed=0)
        panel_train = datasets.take(train_set, config.budget(5_000, 500), seed=1)
        g0, g1 = ch04.born_again(replace(ch04.notebook_budget(epochs=config.budget(4, 1)), generations=2), 0, noise=0.5,
                               data=panel_train, test=test_set, progress=False)["rows"]
    want = {"gen0": str(g0["test_errors"]), "gen1": str(g1["test_errors"]), "ensemble": str(g1["ensemble_errors"]),
            "agreement": f"{g1['agreement_with_previous']:.1%}"}
    assert shown == want, f"noise 50 %: the page shows {shown}, the library {want}"
    ran.shot("noise-panel", panel)
    assert_clean(ran)


# ------------------------------------------------------------------ chapter 05

def test_05_runs_all_cells_in_jupyterlab(lab, chromium):
    check_runs_all_cells(lab, chromium, "05_staged_distillation")


# ------------------------------------------------------------------ chapter 06

def test_06_runs_all_cells_in_jupyterlab(lab, chromium):
    check_runs_all_cells(lab, chromium, "06_evaluating_a_student")


def test_06_gap_report_follows_the_student_menu(lab, chromium):
    from playwright.sync_api import expect

    from kdlab_lib import models
    from kdlab_lib.chapters import ch06_evaluation as ch06
    ran = open_and_run_all(lab, chromium, "06_evaluating_a_student")
    panel = ran.panel("Gap report")
    assert selected_option(dropdown(panel, "family")) == "MNIST digits"
    dropdown(panel, "student").select_option(label="scratch")   # picked from the menu, as with the mouse
    settle(ran)
    readout = panel.locator(".widget-html").filter(has=ran.page.locator(".kd-student-metric")).first
    expect(readout).to_contain_text(", scratch ", timeout=WIDGET_TIMEOUT_MS)
    settle(ran)
    text = readout.inner_text()
    assert "distilled" not in text, text

    # the library, with the notebook's models and data (quick mode): teacher against the scratch student
    with kernel_threads():
        teacher = models.load_teacher("mnist", device="cpu")
        b = ch06.mnist_notebook_budget()
        bundle = ch06.mnist_bundle({"teacher": teacher, **ch06.mnist_students(teacher, b, seed=0, progress=False)}, b)
        r = ch06.gap_report(bundle, "teacher", "scratch", by=selected_option(dropdown(panel, "split by")), top=3)
    shown = (span(panel, "teacher-metric"), span(panel, "student-metric"))
    assert shown == (f"{r['headline']['teacher']:,}", f"{r['headline']['scratch']:,}"), \
        f"teacher vs scratch: the page shows {shown} test errors, the library {r['headline']}"
    worst = panel.locator(".kd-worst").all_inner_texts()
    gaps = re.findall(r"\(gap ([+-]\d+\.\d+)\)", text)
    assert (worst, gaps) == ([w["category"] for w in r["worst"]], [f"{w['gap']:+.3f}" for w in r["worst"]]), \
        f"largest shortfalls: the page shows {list(zip(worst, gaps))}, the library {r['worst']}"
    ran.shot("gap-report-scratch", panel)
    assert_clean(ran)


# ------------------------------------------------------------------ every notebook has its run-all test

def test_every_notebook_runs_all_cells_in_the_browser():
    """A chapter's notebook that lands must get its ``test_NN_runs_all_cells_in_jupyterlab`` here."""
    chapters = {nb.name[:2] for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    tested = {name[5:7] for name in globals() if re.fullmatch(r"test_\d\d_runs_all_cells_in_jupyterlab", name)}
    assert chapters <= tested, f"notebooks without a browser run-all test: chapters {sorted(chapters - tested)}"
