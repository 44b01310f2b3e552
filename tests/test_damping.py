"""Damping rules against their hand-written definitions."""

import jax.numpy as jnp
import numpy as np
import pytest

from ggn_jax.damping import accept_step, gain_ratio, step_damping, update_damping

A = jnp.asarray


def test_gain_ratio_and_its_undefined_cases():
    assert float(gain_ratio(A(0.5), A(1.0))) == 0.5
    for actual, predicted in [(1.0, 0.0), (1.0, -1.0), (np.nan, 1.0), (1.0, np.inf)]:
        assert float(gain_ratio(A(actual), A(predicted))) == -1.0


def test_accept_needs_finite_loss_positive_prediction_and_enough_gain():
    noise = A(0.0)
    assert bool(accept_step("nielsen", A(0.5), A(1.0), 0.25, noise)[0])
    assert not bool(accept_step("nielsen", A(0.2), A(1.0), 0.25, noise)[0])
    assert not bool(accept_step("nielsen", A(np.nan), A(1.0), 0.25, noise)[0])
    assert not bool(accept_step("martens", A(1.0), A(-1.0), 0.0, noise)[0])
    # fixed: the paper's pure step, taken whenever it is finite, even uphill.
    assert bool(accept_step("fixed", A(-3.0), A(1.0), 0.25, noise)[0])
    assert not bool(accept_step("fixed", A(np.inf), A(1.0), 0.25, noise)[0])


def test_changes_below_round_off_are_accepted():
    accepted, in_roundoff = accept_step("nielsen", A(-1e-18), A(1e-18), 1e-4, A(1e-16))
    assert bool(accepted) and bool(in_roundoff)
    accepted, in_roundoff = accept_step("nielsen", A(-1e-10), A(1e-18), 1e-4, A(1e-16))
    assert not bool(accepted) and not bool(in_roundoff)


@pytest.mark.parametrize("rule", ["nielsen", "residual"])
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_nielsen_success_and_failure(rule, rho):
    mu, nu = update_damping(rule, A(1.0), A(8.0), A(rho), A(True), 1e-20, 1e20)
    assert float(mu) == pytest.approx(max(1 / 3, 1 - (2 * rho - 1) ** 3))
    assert float(nu) == 2.0
    mu, nu = update_damping(rule, A(1.0), A(8.0), A(rho), A(False), 1e-20, 1e20)
    assert float(mu) == 8.0 and float(nu) == 16.0


@pytest.mark.parametrize(
    "rule, rho, accepted, factor",
    [
        ("martens", 0.1, True, 1.5), ("martens", 0.5, True, 1.0), ("martens", 0.9, True, 2 / 3),
        ("martens", 0.9, False, 1.5), ("martens", 0.5, False, 1.5),
        ("fixed", 0.0, False, 1.0),
    ],
)
def test_threshold_rules(rule, rho, accepted, factor):
    mu, _ = update_damping(rule, A(1.0), A(2.0), A(rho), A(accepted), 1e-20, 1e20)
    assert float(mu) == pytest.approx(factor)


def test_residual_rule_scales_with_the_residual_and_clips():
    assert float(step_damping("residual", A(2.0), A(1e-3), 1.0, 1e-12, 1e3)) == pytest.approx(2e-3)
    assert float(step_damping("residual", A(2.0), A(1e-3), 2.0, 1e-12, 1e3)) == pytest.approx(2e-6)
    assert float(step_damping("residual", A(2.0), A(0.0), 1.0, 1e-12, 1e3)) == 1e-12
    assert float(step_damping("nielsen", A(1e9), A(0.0), 1.0, 1e-12, 1e3)) == 1e3


def test_rejections_cannot_overflow_nu():
    mu, nu = A(1.0), A(2.0)
    for _ in range(200):
        mu, nu = update_damping("nielsen", mu, nu, A(-1.0), A(False), 1e-12, 1e10)
    assert np.isfinite(float(nu)) and float(mu) == 1e10
