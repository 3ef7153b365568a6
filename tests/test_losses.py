"""Every loss in kdlab_lib.losses against a direct formula written here, plus bad inputs.

The reference formulas below are deliberately written the long way (explicit
exponentials, sums of ``p * log(p / q)``, float64) and share no code with the
library, so a mistake in either shows up as a mismatch.
"""
from __future__ import annotations

import math

import pytest
import torch

from kdlab_lib import losses

SHAPES = [(6, 5), (3, 4, 7)]  # (N, C) classifier logits and (B, S, V) sequence logits


# ------------------------------------------------------------ reference math


def probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T) by hand, in float64."""
    z = logits.double() / temperature
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: explicit sum_c p_c * log(p_c / q_c)."""
    return (p * torch.log(p / q)).sum(dim=-1)


def mean_over(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_position.sum() / per_position.numel()
    return (per_position * mask.double()).sum() / mask.sum()


def make_case(shape, masked: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(shape, generator=g) * 2.0
    teacher = torch.randn(shape, generator=g) * 3.0
    mask = None
    if masked:
        mask = torch.rand(shape[:-1], generator=g) > 0.4
        mask.view(-1)[0] = True    # at least one counted position
        mask.view(-1)[-1] = False  # and at least one dropped one
    return student, teacher, mask


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> bool:
    return torch.allclose(actual.double(), expected.double(), rtol=tol, atol=tol)


# ------------------------------------------------------------------- soften


def test_soften_matches_softmax_formula_and_sums_to_one(gen):
    z = torch.randn(4, 9, generator=gen) * 3
    for temperature in (0.5, 1.0, 4.0):
        p = losses.soften(z, temperature)
        assert p.shape == z.shape
        assert close(p, probs(z, temperature), 1e-6)
        assert torch.allclose(p.sum(-1), torch.ones(4))


def test_soften_large_temperature_tends_to_uniform(gen):
    z = torch.randn(3, 10, generator=gen) * 5
    assert (losses.soften(z, 1.0).max(-1).values > 0.2).all()  # far from uniform at T = 1
    assert torch.allclose(losses.soften(z, 1e6), torch.full((3, 10), 0.1), atol=1e-5)


def test_soften_higher_temperature_raises_entropy_and_keeps_the_ranking(gen):
    z = torch.randn(2, 6, generator=gen) * 3
    entropies = []
    for temperature in (0.5, 1.0, 2.0, 8.0):
        p = losses.soften(z, temperature)
        assert torch.equal(p.argmax(-1), z.argmax(-1))
        entropies.append(float(-(p * p.log()).sum()))
    assert entropies == sorted(entropies) and entropies[0] < entropies[-1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_soften_low_precision_logits_do_not_overflow(dtype):
    z = torch.tensor([[6e4, -6e4, 0.0], [1.0, 2.0, 3.0]]).to(dtype)
    p = losses.soften(z, 0.5)  # z / T is beyond float16's range
    assert p.dtype == dtype
    assert torch.isfinite(p).all()
    assert torch.allclose(p.double(), probs(z, 0.5), atol=1e-2)


# ------------------------------------------------------------- forward/reverse KL, kd_loss


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_forward_and_reverse_kl_match_the_direct_sum(shape, masked, temperature):
    s, t, mask = make_case(shape, masked)
    p_t, p_s = probs(t, temperature), probs(s, temperature)
    fwd = losses.forward_kl(s, t, temperature=temperature, mask=mask)
    rev = losses.reverse_kl(s, t, temperature=temperature, mask=mask)
    assert fwd.dim() == 0 and rev.dim() == 0
    assert close(fwd, mean_over(kl_rows(p_t, p_s), mask))
    assert close(rev, mean_over(kl_rows(p_s, p_t), mask))
    assert not close(fwd, rev)  # KL is not symmetric: the two must really differ here


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_kd_loss_is_t_squared_times_forward_kl(shape, masked):
    s, t, mask = make_case(shape, masked, seed=1)
    for temperature in (1.0, 2.0, 4.0):
        expected = temperature ** 2 * mean_over(kl_rows(probs(t, temperature), probs(s, temperature)), mask)
        kd = losses.kd_loss(s, t, temperature, mask=mask)
        assert close(kd, expected)
        assert close(kd, temperature ** 2 * losses.forward_kl(s, t, temperature=temperature, mask=mask))


def test_masked_out_positions_do_not_matter():
    s, t, mask = make_case((3, 4, 7), masked=True, seed=2)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = 100.0 * torch.randn_like(s2[~mask])
    t2[~mask] = -50.0
    for fn in (losses.forward_kl, losses.reverse_kl):
        assert torch.equal(fn(s, t, temperature=2.0, mask=mask), fn(s2, t2, temperature=2.0, mask=mask))
    assert torch.equal(losses.kd_loss(s, t, 2.0, mask=mask), losses.kd_loss(s2, t2, 2.0, mask=mask))


def test_integer_01_mask_equals_boolean_mask():
    s, t, mask = make_case((3, 4, 7), masked=True, seed=3)
    assert torch.equal(losses.kd_loss(s, t, 2.0, mask=mask), losses.kd_loss(s, t, 2.0, mask=mask.long()))


def test_kl_is_zero_for_identical_logits(gen):
    z = torch.randn(5, 8, generator=gen)
    assert losses.forward_kl(z, z.clone()).abs() < 1e-6
    assert losses.kd_loss(z, z.clone(), 3.0).abs() < 1e-5


@pytest.mark.parametrize("temperature", [1.0, 3.0, 10.0])
def test_kd_loss_gradient_is_t_times_q_minus_p_over_n(temperature, gen):
    s = (torch.randn(8, 10, generator=gen) * 2).requires_grad_()
    t = torch.randn(8, 10, generator=gen) * 2
    (grad,) = torch.autograd.grad(losses.kd_loss(s, t, temperature), s)
    q, p = probs(s.detach(), temperature), probs(t, temperature)
    assert close(grad, temperature * (q - p) / 8, 1e-5)


def test_kd_loss_gradient_on_sequences_counts_only_masked_positions():
    s, t, mask = make_case((3, 4, 7), masked=True, seed=4)
    s.requires_grad_()
    temperature = 2.0
    (grad,) = torch.autograd.grad(losses.kd_loss(s, t, temperature, mask=mask), s)
    q, p = probs(s.detach(), temperature), probs(t, temperature)
    expected = temperature * (q - p) / mask.sum() * mask.unsqueeze(-1).double()
    assert close(grad, expected, 1e-5)
    assert (grad[~mask] == 0).all()


def test_t_squared_keeps_the_gradient_size_constant_across_temperatures(gen):
    s = (torch.randn(8, 10, generator=gen)).requires_grad_()
    t = torch.randn(8, 10, generator=gen)

    def grad_norm(fn, temperature):
        (g,) = torch.autograd.grad(fn(s, t, temperature), s)
        return float(g.norm())

    kd = lambda a, b, T: losses.kd_loss(a, b, T)
    fkl = lambda a, b, T: losses.forward_kl(a, b, temperature=T)
    # kd_loss: about the same size at T = 10, 20, 40
    sizes = [grad_norm(kd, T) for T in (10.0, 20.0, 40.0)]
    assert max(sizes) / min(sizes) < 1.05
    # forward_kl (no T^2): shrinks like 1/T^2, so doubling T divides it by about 4
    for T in (10.0, 20.0):
        ratio = grad_norm(fkl, T) / grad_norm(fkl, 2 * T)
        assert 3.8 < ratio < 4.2


# ---------------------------------------------------------- distillation_loss


def cross_entropy_direct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(z)[y] over labels that are not -100 (T = 1, by hand)."""
    z = logits.double().reshape(-1, logits.shape[-1])
    y = labels.reshape(-1)
    total, count = 0.0, 0
    for row, label in zip(z, y.tolist()):
        if label == -100:
            continue
        total += float(torch.logsumexp(row, 0) - row[label])
        count += 1
    return torch.tensor(total / count, dtype=torch.float64)


@pytest.mark.parametrize("shape", SHAPES)
def test_distillation_loss_end_points_and_mixture(shape, gen):
    s, t, _ = make_case(shape, masked=False, seed=5)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    temperature = 3.0
    ce = cross_entropy_direct(s, labels)  # the hard term is at T = 1 whatever T is
    kd = temperature ** 2 * mean_over(kl_rows(probs(t, temperature), probs(s, temperature)), None)
    assert close(losses.distillation_loss(s, t, labels, temperature, 1.0), ce)
    assert close(losses.distillation_loss(s, t, labels, temperature, 0.0), kd)
    assert close(losses.distillation_loss(s, t, labels, temperature, 0.0), losses.kd_loss(s, t, temperature))
    assert close(losses.distillation_loss(s, t, labels, temperature, 0.3), 0.3 * ce + 0.7 * kd)


def test_distillation_loss_ignores_labels_of_minus_100(gen):
    s, t, _ = make_case((3, 4, 7), masked=False, seed=6)
    labels = torch.randint(0, 7, (3, 4), generator=gen)
    labels[0, 1] = labels[2, 3] = -100
    ce = cross_entropy_direct(s, labels)
    assert close(losses.distillation_loss(s, t, labels, 2.0, 1.0), ce)
    # the ignored positions' logits do not move the hard term
    s2 = s.clone()
    s2[0, 1] += 10 * torch.randn(7, generator=gen)
    s2[2, 3] -= 5.0
    assert close(losses.distillation_loss(s2, t, labels, 2.0, 1.0), ce)


def test_distillation_loss_rejects_bad_labels():
    s, t, _ = make_case((4, 5), masked=False)
    with pytest.raises(ValueError, match="-100"):
        losses.distillation_loss(s, t, torch.full((4,), -100), 2.0, 0.5)
    with pytest.raises(ValueError, match="labels must lie"):
        losses.distillation_loss(s, t, torch.tensor([0, 1, 5, 2]), 2.0, 0.5)
    with pytest.raises(ValueError, match="integer"):
        losses.distillation_loss(s, t, torch.zeros(4), 2.0, 0.5)
    with pytest.raises(ValueError, match="labels have shape"):
        losses.distillation_loss(s, t, torch.zeros(3, dtype=torch.long), 2.0, 0.5)


# ------------------------------------------------------------ generalized JSD


def jsd_direct(s, t, beta, temperature, mask=None):
    p_t, p_s = probs(t, temperature), probs(s, temperature)
    m = beta * p_t + (1 - beta) * p_s
    per_pos = beta * kl_rows(p_t, m) + (1 - beta) * kl_rows(p_s, m)
    return mean_over(per_pos, mask)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_matches_the_mixture_formula(shape, masked, beta):
    s, t, mask = make_case(shape, masked, seed=7)
    for temperature in (1.0, 2.0):
        got = losses.generalized_jsd(s, t, beta, temperature=temperature, mask=mask)
        assert close(got, jsd_direct(s, t, beta, temperature, mask))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_generalized_jsd_end_points_are_forward_and_reverse_kl(shape, masked):
    s, t, mask = make_case(shape, masked, seed=8)
    p_t, p_s = probs(t, 2.0), probs(s, 2.0)
    assert close(losses.generalized_jsd(s, t, 0.0, temperature=2.0, mask=mask),
                 mean_over(kl_rows(p_t, p_s), mask))
    assert close(losses.generalized_jsd(s, t, 1.0, temperature=2.0, mask=mask),
                 mean_over(kl_rows(p_s, p_t), mask))


def test_generalized_jsd_half_is_symmetric_bounded_and_zero_on_equal_inputs(gen):
    s = torch.randn(5, 6, generator=gen) * 4
    t = torch.randn(5, 6, generator=gen) * 4
    a = losses.generalized_jsd(s, t, 0.5)
    assert close(a, losses.generalized_jsd(t, s, 0.5))
    assert 0 < float(a) <= math.log(2) + 1e-6
    far_s, far_t = torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]])
    assert abs(float(losses.generalized_jsd(far_s, far_t, 0.5)) - math.log(2)) < 1e-4
    assert float(losses.generalized_jsd(s, s.clone(), 0.3).abs()) < 1e-6


# ---------------------------------------------------------------- cosine


@pytest.mark.parametrize("shape", [(6, 16), (2, 5, 8)])
@pytest.mark.parametrize("masked", [False, True])
def test_cosine_hidden_loss_is_mean_of_one_minus_cos(shape, masked):
    hs, ht, mask = make_case(shape, masked, seed=9)
    a, b = hs.double(), ht.double()
    cos = (a * b).sum(-1) / (a.pow(2).sum(-1).sqrt() * b.pow(2).sum(-1).sqrt())
    assert close(losses.cosine_hidden_loss(hs, ht, mask=mask), mean_over(1 - cos, mask))


def test_cosine_hidden_loss_known_values(gen):
    h = torch.randn(4, 8, generator=gen)
    assert float(losses.cosine_hidden_loss(h, 3.0 * h)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert float(losses.cosine_hidden_loss(h, -h)) == pytest.approx(2.0, abs=1e-6)
    e = torch.eye(2)
    assert float(losses.cosine_hidden_loss(e[:1], e[1:])) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- top-k KD


def topk_direct(s, values, indices, temperature, mask=None):
    """T^2 * sum_j p_j log(p_j / q_{i_j}): p renormalised over the k kept logits."""
    p = probs(values, temperature)                        # (..., k) sums to 1 over the k kept
    q_full = probs(s, temperature)                        # (..., V)
    flat_q = q_full.reshape(-1, q_full.shape[-1])
    flat_i = indices.reshape(-1, indices.shape[-1])
    q = torch.stack([flat_q[r, flat_i[r]] for r in range(len(flat_q))]).reshape(p.shape)
    return temperature ** 2 * mean_over(kl_rows(p, q), mask)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_topk_kd_loss_with_the_whole_vocabulary_equals_kd_loss(shape, masked):
    s, t, mask = make_case(shape, masked, seed=10)
    values, indices = torch.topk(t, shape[-1], dim=-1)
    for temperature in (1.0, 2.0, 4.0):
        got = losses.topk_kd_loss(s, values, indices, temperature, mask=mask)
        assert torch.allclose(got, losses.kd_loss(s, t, temperature, mask=mask), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_topk_kd_loss_with_small_k_matches_the_renormalised_formula(shape, masked, k):
    s, t, mask = make_case(shape, masked, seed=11)
    values, indices = torch.topk(t, k, dim=-1)
    got = losses.topk_kd_loss(s, values, indices, 2.0, mask=mask)
    assert close(got, topk_direct(s, values, indices, 2.0, mask))
    if k == 3:  # a truncated teacher is not the full one
        assert not close(got, losses.kd_loss(s, t, 2.0, mask=mask), 1e-3)


def test_topk_kd_loss_rejects_indices_outside_the_vocabulary():
    s, t, _ = make_case((4, 6), masked=False)
    values, indices = torch.topk(t, 3, dim=-1)
    for bad in (6, -1):
        broken = indices.clone()
        broken[1, 2] = bad
        with pytest.raises(ValueError, match="topk_indices"):
            losses.topk_kd_loss(s, values, broken, 2.0)


def test_topk_kd_loss_rejects_other_bad_caches():
    s, t, _ = make_case((4, 6), masked=False)
    values, indices = torch.topk(t, 3, dim=-1)
    with pytest.raises(ValueError, match="integer"):
        losses.topk_kd_loss(s, values, indices.float(), 2.0)
    with pytest.raises(ValueError, match="same shape"):
        losses.topk_kd_loss(s, values, indices[:, :2], 2.0)
    with pytest.raises(ValueError, match="positions"):
        losses.topk_kd_loss(s, values[:3], indices[:3], 2.0)
    big = torch.randn(4, 7)
    with pytest.raises(ValueError, match="vocabulary"):
        losses.topk_kd_loss(s, big, torch.zeros(4, 7, dtype=torch.long), 2.0)


# ------------------------------------------------------------- bad inputs, all losses


def _labels_for(logits):
    return torch.zeros(logits.shape[:-1], dtype=torch.long)


def _topk(s, t, T, mask):
    values, indices = torch.topk(t, min(3, t.shape[-1]), dim=-1)
    return losses.topk_kd_loss(s, values, indices, T, mask=mask)


# name -> f(student, teacher, temperature, mask)
WITH_T = {
    "forward_kl": lambda s, t, T, m: losses.forward_kl(s, t, temperature=T, mask=m),
    "reverse_kl": lambda s, t, T, m: losses.reverse_kl(s, t, temperature=T, mask=m),
    "kd_loss": lambda s, t, T, m: losses.kd_loss(s, t, T, mask=m),
    "distillation_loss": lambda s, t, T, m: losses.distillation_loss(s, t, _labels_for(s), T, 0.5, mask=m),
    "jsd_beta0": lambda s, t, T, m: losses.generalized_jsd(s, t, 0.0, temperature=T, mask=m),
    "jsd_beta_half": lambda s, t, T, m: losses.generalized_jsd(s, t, 0.5, temperature=T, mask=m),
    "jsd_beta1": lambda s, t, T, m: losses.generalized_jsd(s, t, 1.0, temperature=T, mask=m),
    "topk_kd_loss": _topk,
}
ALL = {**WITH_T, "cosine_hidden_loss": lambda s, t, T, m: losses.cosine_hidden_loss(s, t, mask=m)}
PAIRWISE = {k: v for k, v in ALL.items() if k != "topk_kd_loss"}  # take a full teacher tensor


@pytest.mark.parametrize("name", sorted(WITH_T) + ["soften"])
@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), True])
def test_bad_temperature_raises(name, temperature):
    s, t, _ = make_case((4, 5), masked=False)
    with pytest.raises(ValueError, match="temperature"):
        if name == "soften":
            losses.soften(s, temperature)
        else:
            WITH_T[name](s, t, temperature, None)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_0_1_raises(alpha):
    s, t, _ = make_case((4, 5), masked=False)
    with pytest.raises(ValueError, match="alpha"):
        losses.distillation_loss(s, t, _labels_for(s), 2.0, alpha)


@pytest.mark.parametrize("beta", [-0.01, 1.01, float("nan"), True])
def test_beta_outside_0_1_raises(beta):
    s, t, _ = make_case((4, 5), masked=False)
    with pytest.raises(ValueError, match="beta"):
        losses.generalized_jsd(s, t, beta)


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_shape_mismatch_raises(name):
    s, _, _ = make_case((4, 5), masked=False)
    t = torch.randn(3, 5)
    with pytest.raises(ValueError, match="shape mismatch"):
        PAIRWISE[name](s, t, 2.0, None)
    with pytest.raises(ValueError, match="shape mismatch"):
        PAIRWISE[name](torch.randn(2, 3, 5), torch.randn(2, 4, 5), 2.0, None)


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_vocabulary_mismatch_raises(name):
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        PAIRWISE[name](torch.randn(4, 5), torch.randn(4, 6), 2.0, None)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_nan_or_inf_logits_raise(name, bad, side):
    s, t, _ = make_case((4, 5), masked=False)
    if name == "topk_kd_loss" and side == "teacher":  # the bad value sits in the cached top-k
        values, indices = torch.topk(t, 3, dim=-1)
        values[2, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            losses.topk_kd_loss(s, values, indices, 2.0)
        return
    (s if side == "student" else t)[2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        ALL[name](s, t, 2.0, None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_soften_rejects_nan_or_inf(bad):
    z = torch.randn(2, 3)
    z[0, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        losses.soften(z, 1.0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_mask_that_selects_nothing_raises(name):
    s, t, _ = make_case((2, 3, 5), masked=False)
    with pytest.raises(ValueError, match="selects no position"):
        ALL[name](s, t, 2.0, torch.zeros(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("mask_shape", [(2, 4), (3, 2), (2, 3, 5), (6,)])
def test_mask_of_the_wrong_shape_raises(name, mask_shape):
    s, t, _ = make_case((2, 3, 5), masked=False)
    with pytest.raises(ValueError, match="mask has shape"):
        ALL[name](s, t, 2.0, torch.ones(mask_shape, dtype=torch.bool))


def test_non_boolean_mask_raises():
    s, t, _ = make_case((2, 3, 5), masked=False)
    with pytest.raises(ValueError, match="boolean"):
        losses.kd_loss(s, t, 2.0, mask=torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="boolean"):
        losses.kd_loss(s, t, 2.0, mask=torch.full((2, 3), 2))


def test_logits_without_a_batch_dimension_or_not_floating_point_raise():
    with pytest.raises(ValueError, match="unsqueeze"):
        losses.kd_loss(torch.randn(5), torch.randn(5), 2.0)
    with pytest.raises(ValueError, match="floating point"):
        losses.kd_loss(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long), 2.0)
    with pytest.raises(ValueError, match="torch.Tensor"):
        losses.kd_loss([[0.0, 1.0]], torch.randn(1, 2), 2.0)


# --------------------------------------------------------- no silent NaN


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_large_finite_logits_give_finite_losses_and_gradients(name, temperature, gen):
    sign = lambda: torch.where(torch.rand(3, 4, 6, generator=gen) > 0.5, 1.0, -1.0)
    s = (1e4 * sign()).requires_grad_()
    t = 1e4 * sign()
    value = ALL[name](s, t, temperature, None)
    (grad,) = torch.autograd.grad(value, s)
    assert torch.isfinite(value), f"{name} returned {value}"
    assert torch.isfinite(grad).all()


def test_large_logits_kd_value_is_right():
    # student certain of class 0, teacher certain of class 1: KL = (z_t1 - z_t0)/T - ... exactly
    s = torch.tensor([[1e4, -1e4]])
    t = torch.tensor([[-1e4, 1e4]])
    # p_T = (0, 1), log q_S(1) = -2e4 / T  ->  KL = 2e4 / T, kd = T * 2e4
    assert float(losses.forward_kl(s, t, temperature=2.0)) == pytest.approx(1e4, rel=1e-5)
    assert float(losses.kd_loss(s, t, 2.0)) == pytest.approx(4e4, rel=1e-5)
    assert torch.allclose(losses.soften(s, 1.0), torch.tensor([[1.0, 0.0]]))


# ------------------------------------------------ DistilBERT's triple loss

def _triple_inputs(gen):
    b, s, v, h = 2, 5, 11, 8
    sl, tl = torch.randn(b, s, v, generator=gen), torch.randn(b, s, v, generator=gen)
    sh, th = torch.randn(b, s, h, generator=gen), torch.randn(b, s, h, generator=gen)
    labels = torch.full((b, s), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, 4] = False
    return sl, tl, labels, sh, th, mask


def test_multi_objective_loss_matches_a_direct_computation(gen):
    sl, tl, labels, sh, th, mask = _triple_inputs(gen)
    out = losses.multi_objective_loss(sl, tl, labels, sh, th, attention_mask=mask, temperature=2.0,
                                      w_soft=5.0, w_mlm=2.0, w_cos=1.0)
    t = 2.0
    p = torch.softmax(tl[mask].double() / t, -1)
    log_q = torch.log_softmax(sl[mask].double() / t, -1)
    soft = t * t * (p * (p.log() - log_q)).sum(-1).mean()
    picked = labels != -100
    mlm = -torch.log_softmax(sl[picked].double(), -1).gather(-1, labels[picked][:, None]).mean()
    cos = (1 - torch.nn.functional.cosine_similarity(sh[mask].double(), th[mask].double(), dim=-1)).mean()
    for key, want in (("soft", soft), ("mlm", mlm), ("cos", cos)):
        assert float(out[key]) == pytest.approx(float(want), rel=1e-5), key
    assert float(out["loss"]) == pytest.approx(float(5 * soft + 2 * mlm + cos), rel=1e-5)


def test_multi_objective_loss_skips_zero_weighted_terms_and_checks_inputs(gen):
    sl, tl, labels, sh, th, mask = _triple_inputs(gen)
    out = losses.multi_objective_loss(sl, tl, labels, None, None, w_cos=0.0)
    assert float(out["cos"]) == 0.0 and out["loss"].requires_grad is False
    with pytest.raises(ValueError, match="weights"):
        losses.multi_objective_loss(sl, tl, labels, sh, th, w_soft=0, w_mlm=0, w_cos=0)
    with pytest.raises(ValueError, match="weights"):
        losses.multi_objective_loss(sl, tl, labels, sh, th, w_mlm=-1)
    with pytest.raises(ValueError, match="NaN"):
        losses.multi_objective_loss(sl * float("nan"), tl, labels, sh, th, w_soft=0)
    with pytest.raises(ValueError, match="vocabulary"):
        losses.multi_objective_loss(sl[..., :5], tl, labels, sh, th)
