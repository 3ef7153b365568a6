"""The chunked KD loss against the plain full-logit losses: values and gradients, in float64.

The reference is ``kdlab_lib.losses`` on the full logits ``h @ W.T`` (cut to the true
vocabulary), differentiated by autograd; the chunked loss must give the same numbers and
the same gradients for every divergence, with temperature, masks, labels and a padded
projection, and on small random GPT-2 models end to end.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

from kdlab_lib import chunked_loss, losses

TOL = dict(rtol=1e-9, atol=1e-11)
DIVERGENCES = [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.5), ("jsd", 0.1)]


def case(seed=0, batch=3, seq=11, hs=6, ht=8, vocab=13, pad=3, masked=True):
    """Random float64 hidden states and projections; ``pad`` extra garbage rows in each projection."""
    g = torch.Generator().manual_seed(seed)
    c = {"h_s": torch.randn(batch, seq, hs, generator=g, dtype=torch.float64),
         "h_t": torch.randn(batch, seq, ht, generator=g, dtype=torch.float64),
         "w_s": torch.randn(vocab + pad, hs, generator=g, dtype=torch.float64),
         "w_t": torch.randn(vocab + pad, ht, generator=g, dtype=torch.float64) * 2,
         "b_s": torch.randn(vocab + pad, generator=g, dtype=torch.float64),
         "labels": torch.randint(0, vocab, (batch, seq), generator=g), "vocab": vocab}
    c["w_s"][vocab:] = 50.0      # padded rows that would dominate any softmax they entered
    c["w_t"][vocab:] = -30.0
    c["mask"] = None
    if masked:
        c["mask"] = torch.rand(batch, seq, generator=g) > 0.3
        c["mask"][0, 0], c["mask"][-1, -1] = True, False
    for k in ("h_s", "w_s", "b_s"):
        c[k].requires_grad_(True)
    return c


def full_reference(c, loss, beta, temperature, alpha=0.0, with_bias=False):
    """The plain path: full logits, cut to the vocabulary, the library's losses, autograd."""
    v = c["vocab"]
    z_s = F.linear(c["h_s"], c["w_s"], c["b_s"] if with_bias else None)[..., :v]
    z_t = F.linear(c["h_t"], c["w_t"])[..., :v]
    div = {"forward": lambda: losses.forward_kl(z_s, z_t, temperature=temperature, mask=c["mask"]),
           "reverse": lambda: losses.reverse_kl(z_s, z_t, temperature=temperature, mask=c["mask"]),
           "jsd": lambda: losses.generalized_jsd(z_s, z_t, beta, temperature=temperature, mask=c["mask"])}[loss]()
    soft = temperature ** 2 * div
    m = c["mask"] if c["mask"] is not None else torch.ones(c["labels"].shape, dtype=torch.bool)
    hard = F.cross_entropy(z_s[m], c["labels"][m])
    total = alpha * hard + (1 - alpha) * soft
    return total, soft, hard


def grads(c, value, with_bias=False):
    wrt = [c["h_s"], c["w_s"]] + ([c["b_s"]] if with_bias else [])
    return torch.autograd.grad(value, wrt)


@pytest.mark.parametrize("loss, beta", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_equals_full_logit_loss_and_gradients(loss, beta, temperature, masked):
    c = case(masked=masked)
    ref, _, _ = full_reference(c, loss, beta, temperature)
    ref_grads = grads(c, ref)
    out = chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], loss=loss, beta=beta,
                                       temperature=temperature, mask=c["mask"], vocab_size=c["vocab"], chunk_size=7)
    assert torch.allclose(out["loss"], ref, **TOL) and torch.allclose(out["soft"], ref, **TOL)
    for got, want in zip(grads(c, out["loss"]), ref_grads):
        assert torch.allclose(got, want, **TOL)


@pytest.mark.parametrize("loss, beta", DIVERGENCES[:3])
def test_labels_alpha_and_bias_mix_like_token_kd_terms(loss, beta):
    c = case(seed=3)
    ref, soft, hard = full_reference(c, loss, beta, 2.0, alpha=0.3, with_bias=True)
    ref_grads = grads(c, ref, with_bias=True)
    out = chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], loss=loss, beta=beta, temperature=2.0,
                                       mask=c["mask"], labels=c["labels"], alpha=0.3, vocab_size=c["vocab"],
                                       chunk_size=5, student_bias=c["b_s"])
    assert torch.allclose(out["loss"], ref, **TOL)
    assert torch.allclose(out["soft"], soft, **TOL) and torch.allclose(out["hard"], hard, **TOL)
    assert not out["soft"].requires_grad and not out["hard"].requires_grad
    for got, want in zip(grads(c, out["loss"], with_bias=True), ref_grads):
        assert torch.allclose(got, want, **TOL)


@pytest.mark.parametrize("chunk_size", [1, 4, 33, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size):
    c = case(masked=False)
    ref, _, _ = full_reference(c, "forward", 0.5, 1.0)
    out = chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], vocab_size=c["vocab"],
                                       chunk_size=chunk_size)
    assert torch.allclose(out["loss"], ref, **TOL)


def test_padded_vocabulary_entries_never_receive_probability():
    c = case(masked=False)
    out = chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], vocab_size=c["vocab"], chunk_size=4)
    g_h, g_w = grads(c, out["loss"])
    assert torch.count_nonzero(g_w[c["vocab"]:]) == 0             # padded rows: exactly no gradient
    # the padded rows (weights 50: they would take nearly all the mass) change nothing at all
    small = {**c, "w_s": c["w_s"][:c["vocab"]].detach(), "w_t": c["w_t"][:c["vocab"]]}
    unpadded = chunked_loss.chunked_kd_loss(c["h_s"].detach(), small["w_s"], c["h_t"], small["w_t"], chunk_size=4)
    assert torch.allclose(out["loss"].detach(), unpadded["loss"], **TOL)
    # and what the padded head would give if the padding entered the softmax is far away
    leaky = chunked_loss.chunked_kd_loss(c["h_s"].detach(), c["w_s"].detach(), c["h_t"], c["w_t"], chunk_size=4)
    assert not torch.allclose(leaky["loss"], unpadded["loss"], rtol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_chunked_topk_equals_topk_kd_loss_and_gradients(temperature):
    c = case(seed=5)
    v = c["vocab"]
    with torch.no_grad():
        vals, idx = F.linear(c["h_t"], c["w_t"])[..., :v].topk(4, dim=-1)
    z_s = F.linear(c["h_s"], c["w_s"])[..., :v]
    ref = 0.8 * losses.topk_kd_loss(z_s, vals, idx, temperature, mask=c["mask"]) + \
        0.2 * F.cross_entropy(z_s[c["mask"]], c["labels"][c["mask"]])
    ref_grads = grads(c, ref)
    out = chunked_loss.chunked_topk_kd_loss(c["h_s"], c["w_s"], vals.to(torch.float64), idx.to(torch.int32),
                                            temperature=temperature, mask=c["mask"], labels=c["labels"], alpha=0.2,
                                            vocab_size=v, chunk_size=6)
    assert torch.allclose(out["loss"], ref, **TOL)
    for got, want in zip(grads(c, out["loss"]), ref_grads):
        assert torch.allclose(got, want, **TOL)


def test_online_top_k_matches_topk_kd_loss_on_the_teachers_logits():
    c = case(seed=7)
    v = c["vocab"]
    z_s = F.linear(c["h_s"], c["w_s"])[..., :v]
    vals, idx = F.linear(c["h_t"], c["w_t"])[..., :v].topk(3, dim=-1)
    ref = losses.topk_kd_loss(z_s, vals, idx, 2.0, mask=c["mask"])
    out = chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], temperature=2.0, mask=c["mask"],
                                       top_k=3, vocab_size=v, chunk_size=4)
    assert torch.allclose(out["loss"], ref, **TOL)
    for got, want in zip(grads(c, out["loss"]), grads(c, ref)):
        assert torch.allclose(got, want, **TOL)
    with pytest.raises(ValueError, match="whole distribution"):
        chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], loss="reverse", top_k=3, vocab_size=v)


def test_topk_with_the_whole_vocabulary_is_the_forward_kl():
    c = case(seed=6, masked=False)
    v = c["vocab"]
    vals, idx = F.linear(c["h_t"], c["w_t"])[..., :v].topk(v, dim=-1)
    topk = chunked_loss.chunked_topk_kd_loss(c["h_s"], c["w_s"], vals, idx, temperature=2.0, vocab_size=v)
    full = chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], temperature=2.0, vocab_size=v)
    assert torch.allclose(topk["loss"], full["loss"], **TOL)


def tiny_lm(layers, hidden, vocab=29, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=16, n_embd=hidden, n_layer=layers, n_head=2,
                                  bos_token_id=0, eos_token_id=0, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).double()


@pytest.mark.parametrize("loss", ["forward", "reverse", "jsd"])
def test_small_gpt2_models_end_to_end_every_parameter_gradient(loss):
    """Full logits through the HF head vs chunked from hidden states: the same gradient on every weight."""
    teacher, student = tiny_lm(2, 12, seed=1).eval(), tiny_lm(1, 8, seed=2)
    x = torch.randint(0, 29, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 5:] = False                                                     # a padded row
    with torch.no_grad():
        t_out = teacher(input_ids=x, output_hidden_states=True)
    full = losses.generalized_jsd(student(input_ids=x).logits[:, :-1], t_out.logits[:, :-1], 0.5,
                                  temperature=2.0, mask=mask) if loss == "jsd" else \
        getattr(losses, f"{loss}_kl")(student(input_ids=x).logits[:, :-1], t_out.logits[:, :-1],
                                      temperature=2.0, mask=mask)
    full = 4.0 * full
    want = torch.autograd.grad(full, list(student.parameters()))
    h_s = student(input_ids=x, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    out = chunked_loss.chunked_kd_loss(h_s[:, :-1], student.lm_head.weight, t_out.hidden_states[-1][:, :-1],
                                       teacher.lm_head.weight, loss=loss, temperature=2.0, mask=mask, chunk_size=4)
    got = torch.autograd.grad(out["loss"], list(student.parameters()))
    assert torch.allclose(out["loss"], full, **TOL)
    for (name, _), g, w in zip(student.named_parameters(), got, want):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-10), name


def test_without_gradients_it_only_computes_the_loss():
    c = case(masked=False)
    ref, _, _ = full_reference(c, "reverse", 0.5, 1.0)
    with torch.no_grad():
        out = chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], loss="reverse",
                                           vocab_size=c["vocab"])
    assert not out["loss"].requires_grad and torch.allclose(out["loss"], ref.detach(), **TOL)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature"),
    ({"loss": "kl"}, "loss must be one of"),
    ({"beta": 1.5}, "beta"),
    ({"alpha": 0.5}, "needs labels"),
    ({"vocab_size": 99}, "vocab_size"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"mask": torch.zeros(3, 11, dtype=torch.bool)}, "selects no position"),
    ({"mask": torch.ones(3, 10, dtype=torch.bool)}, "mask has shape"),
    ({"labels": torch.full((3, 11), 13)}, "labels must lie"),
])
def test_bad_inputs_are_refused_with_a_clear_message(kwargs, message):
    c = case(masked=False)
    kwargs = {"vocab_size": c["vocab"], **kwargs}
    with pytest.raises(ValueError, match=message):
        chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"], **kwargs)


def test_mismatched_models_and_bad_values_are_refused():
    c = case(masked=False)
    with pytest.raises(ValueError, match="teacher_hidden must cover"):
        chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"][:, :5], c["w_t"])
    with pytest.raises(ValueError, match="share the vocabulary"):
        chunked_loss.chunked_kd_loss(c["h_s"], c["w_s"], c["h_t"], c["w_t"][:5])
    with pytest.raises(ValueError, match="output projection"):
        chunked_loss.chunked_kd_loss(c["h_s"], c["w_t"], c["h_t"], c["w_t"])
    bad = c["h_s"].detach().clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        chunked_loss.chunked_kd_loss(bad, c["w_s"], c["h_t"], c["w_t"])
    idx = torch.full((3, 11, 2), 20)
    with pytest.raises(ValueError, match="topk_indices must lie"):
        chunked_loss.chunked_topk_kd_loss(c["h_s"], c["w_s"], torch.zeros(3, 11, 2), idx, vocab_size=c["vocab"])
