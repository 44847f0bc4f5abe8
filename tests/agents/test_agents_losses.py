"""Loss core: Hölder means, ratio modes, PPO-clip equivalences, GSPO stop-gradient, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hadmc.agents import losses as L
from hadmc.errors import ConfigError



@pytest.fixture(autouse=True)
def _float64():
    # closed-form comparisons at 1e-12 need float64; restored so other modules are unaffected
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


log_ratios = st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=12)


def _pm(ls, p):
    t = torch.tensor([ls])
    return float(L.power_mean_log(t, torch.ones_like(t, dtype=torch.bool), p))


@settings(max_examples=200, deadline=None)
@given(log_ratios)
def test_harmonic_le_geometric_le_arithmetic_for_positive_ratios(ls):
    h, g, a = _pm(ls, -1.0), _pm(ls, 0.0), _pm(ls, 1.0)
    assert h <= g + 1e-9 and g <= a + 1e-9
    assert g == pytest.approx(sum(ls) / len(ls), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(log_ratios, st.lists(st.floats(-3, 3), min_size=2, max_size=8))
def test_power_mean_log_is_monotone_in_p(ls, ps):
    vals = [_pm(ls, p) for p in sorted(ps)]
    for lo, hi in zip(vals, vals[1:]):
        assert lo <= hi + 1e-7 * (1 + abs(hi))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=12))
def test_power_mean_log_is_continuous_at_p_zero(ls):
    g = _pm(ls, 0.0)
    for p in (1e-6, -1e-6, 1e-4, -1e-4, 1e-3, -1e-3):
        # |log M_p - log M_0| <= |p| var/2 + O(p^2); var <= 25 here
        assert abs(_pm(ls, p) - g) <= abs(p) * 13 + 1e-9


def test_power_mean_log_matches_direct_formula_in_float64():
    l = torch.tensor([[0.3, -1.2, 2.0, 0.1]])
    m = torch.ones_like(l, dtype=torch.bool)
    for p in (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0):
        direct = math.log((sum(math.exp(p * x) for x in l[0].tolist()) / 4) ** (1 / p))
        assert float(L.power_mean_log(l, m, p)) == pytest.approx(direct, rel=1e-12, abs=1e-12)


def test_power_mean_log_is_finite_at_plus_minus_80_in_float32_and_fully_masked_rows_give_zero():
    l = torch.tensor([[80.0, -80.0, 80.0], [1.0, 2.0, 3.0], [-80.0, -80.0, 0.0]], dtype=torch.float32, requires_grad=True)
    m = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    for p in (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0):
        out = L.power_mean_log(l, m, p)
        assert torch.isfinite(out).all()
        assert out[1] == 0.0  # empty row: ratio 1
        assert float(out[2].detach()) == pytest.approx(-80.0, abs=1e-4)
        out.sum().backward()
        assert torch.isfinite(l.grad).all() and (l.grad[1] == 0).all()
        l.grad = None
    # p = 2 over {80, -80, 80}: (log(2/3) + 160) / 2
    assert float(L.power_mean_log(l, m, 2.0)[0]) == pytest.approx((math.log(2 / 3) + 160) / 2, abs=1e-3)


def test_learned_p_gets_a_gradient_through_power_mean_and_stays_bounded():
    lp = L.LearnedPower(init=0.5, bound=2.0)
    l = torch.tensor([[0.5, -0.3, 1.0]])
    out = L.power_mean_log(l, torch.ones_like(l, dtype=torch.bool), lp())
    out.sum().backward()
    assert lp.raw.grad is not None and lp.raw.grad != 0
    lp.raw.data.fill_(50.0)
    assert float(lp()) <= 2.0


def test_agm_iteration_converges_to_the_geometric_mean():
    for a, h in [(1.0, 9.0), (0.01, 100.0), (3.0, 3.0), (1e-6, 1.0)]:
        lim, iters = L.arithmetic_harmonic_mean(a, h)
        assert lim == pytest.approx(math.sqrt(a * h), rel=1e-12)
        assert iters < 40


def test_ratio_mode_names_parse_and_unknown_names_list_the_valid_ones():
    assert L.parse_ratio_mode("harmonic") == L.RatioMode("power", -1.0)
    assert L.parse_ratio_mode("geometric") == L.RatioMode("power", 0.0)
    assert L.parse_ratio_mode("arithmetic") == L.RatioMode("power", 1.0)
    assert L.parse_ratio_mode("power:-0.5") == L.RatioMode("power", -0.5)
    with pytest.raises(ConfigError, match="valid: token, joint, power, power:<p>, arithmetic, geometric, harmonic"):
        L.parse_ratio_mode("median")
    with pytest.raises(ConfigError, match="unknown policy loss 'dpo'; valid: pmd-mean, pmd-part, ppo-clip"):
        L.get_policy_loss("dpo")
    with pytest.raises(ConfigError, match="unknown p schedule 'step'; valid: constant, cosine, linear"):
        L.scheduled_p("step", 2, -2, 0.5)
    with pytest.raises(ConfigError, match="real number"):
        L.parse_ratio_mode("power:x")


def _cleanrl_pg_loss(newlogprob, b_logprobs, adv, clip):
    logratio = newlogprob - b_logprobs
    ratio = logratio.exp()
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    return torch.max(pg_loss1, pg_loss2).mean()


@pytest.mark.parametrize(
    "mode,kw",
    [("token", {}), ("joint", {}), ("arithmetic", {}), ("geometric", {}), ("harmonic", {}), ("power:-0.5", {}),
     ("power:1.7", {}), ("geometric", {"stop_gradient": True}), ("harmonic", {"log_space_clip": True}),
     ("token", {"log_space_clip": True})],
)
def test_one_factor_every_ratio_mode_equals_the_cleanrl_ppo_loss(mode, kw):
    g = torch.Generator().manual_seed(0)
    new = torch.randn(64, generator=g) * 0.3
    old = torch.randn(64, generator=g) * 0.3
    adv = torch.randn(64, generator=g)
    ref_new = new.clone().requires_grad_(True)
    ref = _cleanrl_pg_loss(ref_new, old, adv, 0.2)
    ref.backward()
    ours_new = new.clone().requires_grad_(True)
    lr = (ours_new - old).unsqueeze(-1)
    loss = L.ppo_clip_loss(lr, torch.ones_like(lr, dtype=torch.bool), adv, L.parse_ratio_mode(mode), **kw).mean()
    loss.backward()
    assert float(loss) == pytest.approx(float(ref), abs=1e-12)
    assert torch.allclose(ours_new.grad, ref_new.grad, atol=1e-12)


def test_gspo_stop_gradient_form_has_sequence_ratio_value_and_gspo_gradient():
    g = torch.Generator().manual_seed(1)
    l = (torch.randn(8, 6, generator=g) * 0.05).requires_grad_(True)
    mask = torch.rand(8, 6, generator=g) > 0.3
    mask[:, 0] = True
    adv = torch.randn(8, generator=g)
    mode = L.parse_ratio_mode("geometric")
    # value: each factor carries exp(sg(log s)) = s, the sequence ratio
    log_s = L.row_log_ratio(l, mask, mode)
    tok = L.stop_gradient_log_ratio(l, log_s)
    assert torch.allclose(torch.where(mask, tok, log_s.unsqueeze(-1)), log_s.unsqueeze(-1).expand_as(tok))
    # loss value and gradient equal the GSPO sequence objective (wide clip: nothing clipped)
    sg = L.ppo_clip_loss(l, mask, adv, mode, clip_low=0.9, clip_high=10.0, stop_gradient=True).sum()
    (g_sg,) = torch.autograd.grad(sg, l)
    s = torch.exp(L.masked_mean(l, mask))
    gspo = (-adv * s).sum()  # -A * s_i, s_i = (prod r_j)^(1/|y|)
    (g_gspo,) = torch.autograd.grad(gspo, l)
    assert float(sg) == pytest.approx(float(gspo), rel=1e-12)
    assert torch.allclose(g_sg, g_gspo, atol=1e-12)
    # clipped rows have no gradient in either form
    far = (l + 1.0)  # s = e^(mean l + 1) > 1.2: every row clipped for A > 0
    sg_c = L.ppo_clip_loss(far, mask, adv.abs(), mode, clip_high=0.2, stop_gradient=True).sum()
    (g_c,) = torch.autograd.grad(sg_c, l)
    assert torch.count_nonzero(g_c) == 0


def test_log_space_clip_equals_standard_clip_and_stays_finite_at_extreme_ratios():
    g = torch.Generator().manual_seed(2)
    lr = torch.randn(200, generator=g)
    adv = torch.randn(200, generator=g)
    for dual in (None, 3.0):
        a = L.clipped_surrogate(lr.exp(), adv, 0.2, 0.28, dual)
        b = L.log_space_clipped_surrogate(lr, adv, 0.2, 0.28, dual)
        assert torch.allclose(a, b, atol=1e-12)
    big = torch.tensor([1000.0, -1000.0], dtype=torch.float32)
    out = L.log_space_clipped_surrogate(big, torch.tensor([1.0, -1.0], dtype=torch.float32), 0.2, 0.2, 3.0)
    assert torch.isfinite(out).all()


def test_asymmetric_and_dual_clip_bound_the_surrogate():
    r = torch.tensor([0.5, 1.5, 5.0, 5.0])
    adv = torch.tensor([1.0, 1.0, -1.0, 1.0])
    loss = L.clipped_surrogate(r, adv, clip_low=0.1, clip_high=0.3, dual_clip=3.0)
    # A>0: -min(r, 1.3) ; A<0: -A * min(max(r, 0.9), 3)
    assert torch.allclose(loss, torch.tensor([-0.5, -1.3, 3.0, -1.3]))


def test_pmd_loss_is_half_tau_over_length_times_squared_residual():
    l = torch.tensor([[0.1, 0.2, 0.0], [0.5, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0])
    out = L.pmd_loss(l, m, adv, tau=0.5)
    assert torch.allclose(out, torch.tensor([0.5 * 0.5 / 2 * (0.3 - 2.0) ** 2, 0.5 * 0.5 * (0.5 + 4.0) ** 2]))


def test_value_loss_clipping_and_diagnostics():
    v, ret, old = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0])
    assert float(L.value_loss(v, ret)) == pytest.approx(1.0)
    assert float(L.value_loss(v, ret, old, 0.5)) == pytest.approx(((2 - 0.5) ** 2 + (2 - 0.5) ** 2) / 2)
    assert float(L.approx_kl(torch.zeros(5))) == 0.0
    lr = torch.log(torch.tensor([[1.0, 1.5], [0.7, 1.1]]))
    assert float(L.clip_fraction(lr, torch.ones_like(lr, dtype=torch.bool), 0.2, 0.2)) == pytest.approx(0.5)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert L.explained_variance(y, y) == pytest.approx(1.0)
    ent = torch.tensor([[1.0, 2.0, 4.0]])
    assert float(L.entropy_per_row(ent, torch.tensor([[True, False, True]]))) == 5.0


def test_p_schedules_go_from_start_to_end():
    assert L.scheduled_p("linear", 2, -2, 0.0) == 2 and L.scheduled_p("linear", 2, -2, 1.0) == -2
    assert L.scheduled_p("linear", 2, -2, 0.5) == pytest.approx(0.0)
    assert L.scheduled_p("cosine", 2, -2, 0.5) == pytest.approx(0.0)
    assert L.scheduled_p("cosine", 2, -2, 0.0) == pytest.approx(2.0)
    assert L.scheduled_p("constant", 1, -2, 0.7) == 1


def test_adaptive_selection_follows_volatility_then_progress_with_configurable_thresholds():
    assert L.select_ratio_mean([10, 100, 5, 120, 3, 90]) == "harmonic"
    assert L.select_ratio_mean([100, 100, 100, 99, 100, 99]) == "arithmetic"
    assert L.select_ratio_mean([100, 102, 104, 106, 108, 110]) == "geometric"
    assert L.select_ratio_mean([100, 102, 104, 106, 108, 110], progress_threshold=0.5) == "arithmetic"
    assert L.select_ratio_mean([10, 100, 5, 120, 3, 90], volatility_threshold=5.0) in ("arithmetic", "geometric")


@pytest.mark.parametrize("log_space_clip", [False, True])
@pytest.mark.parametrize("mode", ["joint", "arithmetic", "power:2"])
def test_row_ratios_past_float32_exp_overflow_give_finite_losses_and_gradients(mode, log_space_clip):
    # summed log-ratio 100 > 88.7, where exp overflows float32: NaN gradients for A > 0
    # without log-space clipping, an infinite loss for A < 0 even with it
    lr = torch.tensor([[50.0, 50.0], [50.0, 50.0], [-60.0, -60.0]], dtype=torch.float32, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float32)
    mask = torch.ones(3, 2, dtype=torch.bool)
    loss = L.ppo_clip_loss(lr, mask, adv, L.parse_ratio_mode(mode), log_space_clip=log_space_clip)
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    assert torch.isfinite(lr.grad).all(), lr.grad
    # A > 0: clipped at 1 + eps; A < 0: large but finite, bounded in log space
    assert float(loss[0]) == pytest.approx(-1.2)
    assert float(loss[1]) == pytest.approx(math.exp(L.LOG_RATIO_BOUND), rel=1e-5)


def test_log_space_clip_bounds_negative_advantages_in_float32_too():
    big = torch.tensor([100.0, 1000.0], dtype=torch.float32, requires_grad=True)
    out = L.log_space_clipped_surrogate(big, torch.tensor([-1.0, -1.0]), 0.2, 0.2)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(big.grad).all()
