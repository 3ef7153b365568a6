"""Each panel, driven from Python, must show the library's own numbers for the new setting."""
from __future__ import annotations

import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from kdlab_lib import config, datasets, losses, metrics, models, train, widgets  # noqa: E402


@pytest.fixture(scope="module")
def teacher_and_test():
    teacher = models.load_teacher("mnist", device="cpu")
    test = datasets.take(datasets.load_mnist("test"), 1000, seed=0)
    return teacher, test, metrics.predict(teacher, test)


def test_temperature_explorer_follows_slider_and_digit(teacher_and_test):
    _, test, logits = teacher_and_test
    x, y = test.tensors
    panel = widgets.TemperatureExplorer(logits, x, y)
    assert panel.temperature.description and panel.digit.description
    # the first choices are the most ambiguous digits, by the library's measure
    assert panel.digit.options[0][1] == metrics.ambiguous_examples(logits, 1)[0]
    for t in (0.5, 3.7, 25.0):
        panel.temperature.value = t
        i = panel.result["index"]
        want = losses.soften(logits[i:i + 1], t)[0]
        assert panel.result["temperature"] == pytest.approx(t, rel=1e-6)
        torch.testing.assert_close(panel.result["probs"], want)
        assert panel.result["entropy"] == pytest.approx(float(metrics.entropy(want)), abs=1e-6)
        assert f"{panel.result['entropy']:.3f}" in panel.readout.value
    other = panel.digit.options[3][1]
    panel.digit.value = other
    assert panel.result["index"] == other and panel.result["label"] == int(y[other])
    torch.testing.assert_close(panel.result["probs"], losses.soften(logits[other:other + 1], 25.0)[0])
    # higher temperature, flatter distribution: entropy rises towards ln 10
    panel.temperature.value = 30.0
    high = panel.result["entropy"]
    panel.temperature.value = 1.0
    assert panel.result["entropy"] < high <= math.log(10) + 1e-6
    panel.scale.value = "log"
    assert panel.result["log_scale"] is True


def test_dark_knowledge_map_recomputes_matrix(teacher_and_test):
    _, test, logits = teacher_and_test
    y = test.tensors[1]
    panel = widgets.DarkKnowledgeMap(logits, y, temperature=2.0)
    for t in (1.0, 6.5, 20.0):
        panel.temperature.value = t
        want = metrics.class_similarity(logits, y, t)
        torch.testing.assert_close(panel.result["matrix"], want)
        assert panel.result["pairs"] == metrics.confusable_pairs(want, 5)
        a, b, _ = panel.result["pairs"][0]
        assert f"{a}-{b}" in panel.readout.value
    # rows of the averaged soft targets are distributions
    torch.testing.assert_close(panel.result["matrix"].sum(1), torch.ones(10))


def test_playground_trains_what_the_sliders_say(teacher_and_test):
    teacher, test, _ = teacher_and_test
    train_set = datasets.take(datasets.load_mnist("train"), 600, seed=3)
    t_logits = metrics.predict(teacher, train_set)
    panel = widgets.DistillationPlayground(t_logits, train_set, test, epochs=1, teacher_errors=7)
    assert panel.result["last"] is None and panel.runs == []
    panel.temperature.value, panel.alpha.value = 3.0, 0.3
    panel.button.click()
    last = panel.result["last"]
    assert (last["temperature"], last["alpha"]) == (3.0, 0.3)
    x, y = test.tensors
    assert last["errors"] == metrics.error_count(metrics.predict(panel.last_student, x), y)
    # the library, run independently with the same settings, gives the same student
    torch.manual_seed(0)
    same = models.mlp((30, 30))
    train.distill(same, t_logits, train_set, panel.distill_config(3.0, 0.3), progress=False)
    assert metrics.error_count(metrics.predict(same, x), y) == last["errors"]
    assert panel.result["scratch_errors"] is not None
    panel.temperature.value = 8.0
    panel.button.click()
    assert [r["temperature"] for r in panel.result["runs"]] == [3.0, 8.0]
    assert str(panel.result["last"]["errors"]) in panel.readout.value
    # the seed spread trains only the seeds this setting has not seen, each the library's student
    spread = panel.seed_spread(seeds=(0, 1))
    assert [(r["temperature"], r["seed"]) for r in panel.runs] == [(3.0, 0), (8.0, 0), (8.0, 1)]
    config.seed_everything(1)
    other = models.mlp((30, 30))
    train.distill(other, t_logits, train_set, panel.distill_config(8.0, 0.3, seed=1), progress=False)
    assert spread["errors"] == [panel.runs[1]["errors"], metrics.error_count(metrics.predict(other, x), y)]
    assert spread["mean"] == pytest.approx(sum(spread["errors"]) / 2)
    assert spread["std"] == pytest.approx(abs(spread["errors"][0] - spread["errors"][1]) / 2 ** 0.5)
    assert panel.seed_spread(seeds=(0, 1)) == spread and len(panel.runs) == 3   # nothing retrained


def test_bias_panel_matches_metrics(teacher_and_test):
    _, test, logits = teacher_and_test
    y = test.tensors[1]
    damped = logits.clone()
    damped[:, 3] -= 6.0  # a student that under-predicts 3s
    panel = widgets.BiasPanel(damped, y, cls=3, chosen=4.0)
    before = panel.result["class_correct"]
    panel.bias.value = 6.0
    assert panel.result == metrics.class_bias_effect(damped, y, 3, 6.0)
    assert panel.result["class_correct"] > before
    assert f">{panel.result['class_correct']}<" in panel.readout.value


def test_callback_errors_propagate_outside_a_kernel(teacher_and_test):
    _, test, logits = teacher_and_test
    panel = widgets.DarkKnowledgeMap(logits, test.tensors[1])
    panel.logits = torch.full_like(logits, float("nan"))  # a broken model's outputs
    with pytest.raises(ValueError, match="NaN"):
        panel.temperature.value = 3.0


@pytest.mark.parametrize("make, message", [
    (lambda l, x, y: widgets.TemperatureExplorer(l, x, y, choices=[len(y)]), "choices"),
    (lambda l, x, y: widgets.TemperatureExplorer(l, x, y, choices=[-1]), "choices"),
    (lambda l, x, y: widgets.TemperatureExplorer(l, x, y, choices=[]), "choices"),
    (lambda l, x, y: widgets.TemperatureExplorer(l, x, y, temperature=100.0), "temperature"),
    (lambda l, x, y: widgets.DarkKnowledgeMap(l, y, temperature=0.1), "temperature"),
    (lambda l, x, y: widgets.DarkKnowledgeMap(l, y, temperature=float("nan")), "temperature"),
], ids=["choice past the end", "negative choice", "no choice", "T above the slider", "T below the slider", "T NaN"])
def test_panels_refuse_settings_they_cannot_show(teacher_and_test, make, message):
    _, test, logits = teacher_and_test
    with pytest.raises(ValueError, match=message):
        make(logits, *test.tensors)


@pytest.mark.slow
def test_loss_mixer_trains_with_the_chosen_weights():
    from kdlab_lib.chapters import ch02_distilbert as ch02
    teacher, tok = ch02.load()
    b = ch02.budget(distill_steps=2, batch_size=4)
    train_blocks, val_blocks = ch02.mlm_blocks(tok, "train", 16), ch02.mlm_blocks(tok, "val", 4)
    panel = widgets.LossMixer(teacher, tok, train_blocks, val_blocks, b)
    assert panel.result["teacher_accuracy"] == pytest.approx(ch02.mlm_score(teacher, tok, val_blocks)["accuracy"])
    panel.w_soft.value, panel.w_mlm.value, panel.w_cos.value, panel.temperature.value = 1.0, 0.0, 3.0, 4.0
    panel.button.click()
    last = panel.result["last"]
    assert (last["w_soft"], last["w_mlm"], last["w_cos"], last["temperature"]) == (1.0, 0.0, 3.0, 4.0)
    assert last["accuracy"] == pytest.approx(ch02.mlm_score(panel.last_student, tok, val_blocks)["accuracy"])
    same, hist = ch02.distill(teacher, tok, train_blocks, b, w_soft=1.0, w_mlm=0.0, w_cos=3.0, temperature=4.0,
                            progress=False)
    assert hist.records[-1]["loss"] == pytest.approx(last["history"][-1]["loss"], rel=1e-5)
    assert ch02.mlm_score(same, tok, val_blocks)["accuracy"] == pytest.approx(last["accuracy"])
    assert f"{last['accuracy']:.3f}" in panel.readout.value


@pytest.mark.slow
def test_kl_fit_explorer_covers_with_forward_and_seeks_with_reverse():
    from kdlab_lib.chapters import ch03_gpt2 as ch03
    panel = widgets.KLFitExplorer(steps=200)
    forward = panel.result
    assert forward["beta"] == 0.0 and panel.beta.disabled
    assert "kd-between" in panel.readout.value
    direct = ch03.fit_gaussian(ch03.bimodal_logits(), 0.0, steps=200)
    assert forward["mu"] == pytest.approx(direct["mu"]) and forward["sigma"] == pytest.approx(direct["sigma"])
    panel.objective.value = "reverse KL"
    reverse = panel.result
    assert reverse["beta"] == 1.0 and reverse["sigma"] < forward["sigma"]
    assert reverse["between"] < forward["between"]          # mode-seeking leaves the gap empty
    panel.objective.value = "JSD (β)"
    assert not panel.beta.disabled
    panel.beta.value = 0.3
    assert panel.result["beta"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="objective"):
        widgets.KLFitExplorer(objective="cross-entropy")


@pytest.mark.slow
def test_next_token_explorer_shows_each_models_softened_distribution():
    import transformers

    from kdlab_lib import losses, text
    tok = text.load_tokenizer("bpe")
    torch.manual_seed(0)
    make = lambda n: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=n, n_head=2)).eval()
    teacher, student = make(2), make(1)
    panel = widgets.NextTokenExplorer({"teacher": teacher, "student": student}, tok, prompt="To be, or not")
    ids = torch.tensor([[text.separator_id(tok)] + tok("To be, or not")["input_ids"]])
    with torch.no_grad():
        expected = losses.soften(teacher(input_ids=ids).logits[:, -1], 1.0)[0]
    assert torch.allclose(panel.result["probs"]["teacher"], expected, atol=1e-6)
    panel.temperature.value = 4.0
    r = panel.result
    assert r["temperature"] == pytest.approx(4.0)
    p = r["probs"]["teacher"]
    assert r["entropy"]["teacher"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-4)
    with torch.no_grad():   # the reference KL in float64, straight from both models' logits at T = 4
        lp, lq = (torch.log_softmax(m(input_ids=ids).logits[0, -1].double() / 4.0, -1) for m in (teacher, student))
    assert r["kl"] == pytest.approx(float((lp.exp() * (lp - lq)).sum()), rel=1e-4)
    assert "kd-kl" in panel.readout.value and len(r["top"]["student"]) == 8
    panel.prompt.value = ""                                   # an empty prompt still has a context
    assert panel.result["n_tokens"] == 0
    with pytest.raises(ValueError, match="at least one model"):
        widgets.NextTokenExplorer({}, tok)


# In a kernel, an exception inside a callback must land in the panel's Output (not vanish), and the
# next good setting must clear it. nbclient stands in for the browser: like JupyterLab it routes what
# a callback prints to the Output widget whose capture is open, and syncs the Output's ``outputs``
# back to the kernel, where the next cell reads them. (tests/test_browser.py moves the real sliders.)
KERNEL_SETUP = '''
import json, torch
import matplotlib
matplotlib.use("Agg")
from torch.utils.data import TensorDataset
from kdlab_lib import widgets
from kdlab_lib.chapters import ch04_self_distillation as ch04
g = torch.Generator().manual_seed(0)
digits = lambda n: TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
noise = widgets.NoisePanel(ch04.budget(hidden=(16,), epochs=1, batch_size=32), digits(80), digits(40))
real_born_again = ch04.born_again

def state(panel):
    print(json.dumps({"outputs": [o.get("ename", o["output_type"]) for o in panel.out.outputs],
                      "error_text": [o.get("evalue", "") for o in panel.out.outputs],
                      "readout": panel.readout.value,
                      "button_disabled": getattr(getattr(panel, "button", None), "disabled", None),
                      "figure": [list(t.y) for t in panel.fig.data] if panel.fig is not None else None,
                      "pending": repr(getattr(panel, "_pending", None))}))
'''
KERNEL_STEPS = [
    # the noise panel: a failing Train, then fast repeated slider moves and Train
    "def boom(*a, **k):\n    raise RuntimeError('boom in born_again')\nch04.born_again = boom\n"
    "noise.noise.value = 0.5\nnoise.button.click()",
    "state(noise)",
    "ch04.born_again = real_born_again\nfor v in (0.0, 0.1, 0.6, 0.8, 0.3, 0.2):\n    noise.noise.value = v\n"
    "noise.button.click()\nnoise.noise.value = 0.4\nnoise.button.click()",
    "state(noise)",
]


@pytest.fixture(scope="module")
def kernel_states():
    import json

    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in [KERNEL_SETUP, *KERNEL_STEPS]]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    for cell in nb.cells:   # the cells themselves never show an error: the panels' Outputs do
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
    return [json.loads("".join(o.text for o in c.outputs if o.output_type == "stream"))
            for c in nb.cells if c.source.startswith("state(")]


@pytest.mark.slow
def test_a_failing_callback_shows_its_error_in_the_panels_output_and_the_next_run_clears_it(kernel_states):
    noise_failed, noise_recovered = kernel_states
    assert "RuntimeError" in noise_failed["outputs"] and "boom in born_again" in noise_failed["error_text"]
    assert noise_failed["button_disabled"] is False and noise_failed["pending"] == "None"   # usable again
    assert "RuntimeError" not in noise_recovered["outputs"], noise_recovered
    assert noise_recovered["figure"] and all(len(y) == 2 for y in noise_recovered["figure"])   # runs at 0.2, 0.4
    assert '<span class="kd-noise">40%</span>' in noise_recovered["readout"]
    assert noise_recovered["button_disabled"] is False and noise_recovered["pending"] == "None"


# ------------------------------------------------------------------ plotly figures that follow the slider

def test_slider_panels_draw_the_library_numbers_into_their_plotly_traces(teacher_and_test):
    _, test, logits = teacher_and_test
    x, y = test.tensors
    explorer = widgets.TemperatureExplorer(logits, x, y)
    explorer.temperature.value = 7.3
    i = explorer.result["index"]
    want = losses.soften(logits[i:i + 1], 7.3)[0]
    assert explorer.fig.data[0].y == pytest.approx(want.tolist(), abs=1e-4)        # the bars are the probabilities
    assert f"#{i} " in explorer.fig.layout.title.text and explorer.side.value[:4] == b"\x89PNG"   # and the digit
    assert explorer.temperature.continuous_update                                 # it follows the drag
    dark = widgets.DarkKnowledgeMap(logits, y)
    dark.temperature.value = 2.5
    m = metrics.class_similarity(logits, y, 2.5)
    shown = dark.fig.data[0].z
    assert shown[3][5] == pytest.approx(float(m[3, 5]), abs=1e-4) and shown[4][4] is None   # diagonal hidden
    bias = widgets.BiasPanel(logits, y, cls=3)
    bias.bias.value = 2.5
    assert list(bias.fig.data[2].x) == [2.5, 2.5]                                 # the marker moved, the curves stayed


def test_a_fast_drag_is_coalesced_and_ends_on_the_last_value(teacher_and_test):
    """Inside a kernel (an asyncio loop), 30 slider moves from the browser (``set_state``, as a comm
    message arrives) within a few milliseconds redraw a handful of times, never replay afterwards, and
    leave the figure showing the last value; a value set from code redraws at once."""
    import asyncio
    _, test, logits = teacher_and_test
    panel = widgets.DarkKnowledgeMap(logits, test.tensors[1])
    calls = []
    real = panel.refresh

    def counted():
        calls.append(float(panel.temperature.value))
        real()
    panel.refresh = counted

    async def drag():
        for k in range(30):
            panel.temperature.set_state({"value": 1.0 + 0.2 * k})
            await asyncio.sleep(0.001)
        await asyncio.sleep(3 * panel.interval)   # long enough for the trailing redraw
        n = len(calls)
        panel.temperature.value = 2.0             # from code: at once, in the same breath
        assert len(calls) == n + 1 and panel.result["temperature"] == 2.0
        panel.temperature.value = 6.8
    # in a thread of its own: under the browser tests, Playwright's event loop already runs in this one
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, drag()).result()
    assert 1 <= len(calls) < 30 and calls[-1] == pytest.approx(6.8)
    torch.testing.assert_close(panel.result["matrix"], metrics.class_similarity(logits, test.tensors[1], 6.8))


def test_next_token_explorer_reuses_the_prompts_logits_when_only_t_moves():
    from kdlab_lib import text
    tok = text.load_tokenizer("bpe")
    torch.manual_seed(0)
    model = models.gpt2_lm(tok.vocab_size, layers=1, hidden=16, heads=2, max_len=32, eos_token_id=0)
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    panel = widgets.NextTokenExplorer({"teacher": model}, tok, prompt="To be")
    panel.temperature.value = 2.0
    panel.temperature.value = 0.5
    assert len(calls) == 1                              # one forward pass for the prompt, none per T
    panel.prompt.value = "or not"
    assert len(calls) == 2
    hook.remove()
    assert panel.fig.data[0].x == pytest.approx([p for _, p in panel.result["top"]["teacher"]], abs=1e-4)
