"""The options of `ggn` (`ggn_jax.options`): checks at construction and
the defaults each resolves to, against the rules their docstrings state."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mlp_apply

import ggn_jax
from ggn_jax.options import (
    CLASSIFICATION_DEFAULTS,
    OTHER_DEFAULTS,
    GGNConfig,
    loss_defaults,
    make_config,
)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"loss": "mse"}, ValueError, "unknown loss 'mse'"),
        ({"solver": "lu"}, ValueError, "unknown solver 'lu'; allowed: auto, primal, dual, cg"),
        ({"damping_rule": "adam"}, ValueError, "unknown damping_rule 'adam'"),
        ({"damping_type": "tikhonov"}, ValueError, "unknown damping_type"),
        ({"damping": -1.0}, ValueError, "damping must be finite and > 0"),
        ({"damping": float("nan")}, ValueError, "damping must be finite"),
        ({"damping": "big"}, TypeError, "damping must be a number"),
        ({"residual_exponent": 3.0}, ValueError, r"residual_exponent must lie in \[1, 2\]"),
        ({"cg_max_iters": 0}, ValueError, "cg_max_iters must be a positive integer"),
        ({"min_damping": 1.0, "max_damping": 0.1}, ValueError, "min_damping .* exceeds"),
        ({"dampnig": 1.0}, TypeError, "unknown option.*dampnig.*allowed: damping"),
        ({"cg_stop": "early"}, ValueError, "unknown cg_stop 'early'; allowed: residual, martens"),
        ({"matmul_precision": "tf32"}, ValueError, "unknown matmul_precision 'tf32'; allowed"),
        ({"relative_damping_floor": -1.0}, ValueError, "relative_damping_floor must be"),
        ({"primal_factorization": "lu"}, ValueError,
         "unknown primal_factorization 'lu'; allowed: auto, cholesky, qr"),
        ({"curvature_samples": 0}, ValueError, "curvature_samples must be a positive integer"),
        ({"damping": jnp.ones(2)}, ValueError, r"damping must be a scalar, got an array of shape \(2,\)"),
        ({"cg_tol": jnp.array(1 + 1j)}, TypeError, "cg_tol must be a real number"),
        ({"max_damping": jnp.array(-1.0)}, ValueError, "max_damping must be finite and > 0"),
        ({"step_growth": 0.5}, ValueError, r"step_growth must be ≥ 1 \(inf for no bound\)"),
    ],
)
def test_bad_options_fail_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        ggn_jax.ggn(mlp_apply, **kwargs)


@pytest.mark.parametrize(
    "n_outputs, squared_error, blocks, expected",
    [
        # N·K < P (exact learning): window 8 for squared error, the
        # acceleration with α = 0.75, steps at most twice the last.
        (10, True, False, (8, True, 0.75, 2.0)),
        # N·K ≥ P, squared error: the window, the stricter α = 0.25, no bound.
        (40, True, False, (8, True, 0.25, math.inf)),
        # Residual blocks with N·K ≥ P: α = 0.75 again.
        (40, True, True, (8, True, 0.75, math.inf)),
        # Another loss, N·K < P: monotone, acceleration on, no bound.
        (10, False, False, (0, True, 0.75, math.inf)),
        # Another loss, N·K ≥ P: monotone, no acceleration.
        (40, False, False, (0, False, 0.25, math.inf)),
    ],
)
def test_auto_options_resolve_by_the_problems_shape(n_outputs, squared_error, blocks, expected):
    outputs = jnp.zeros((n_outputs, 1))
    assert GGNConfig().resolved_options(outputs, 20, squared_error, blocks) == expected
    # Set by hand, they stay as set.
    config = GGNConfig(nonmonotone_window=3, geodesic_acceleration=False,
                       acceleration_ratio=0.5, step_growth=4.0)
    assert config.resolved_options(outputs, 20, squared_error, blocks) == (3, False, 0.5, 4.0)
    # The argument's earlier keyword still works, with a warning.
    with pytest.warns(DeprecationWarning, match="now regression"):
        old = GGNConfig().resolved_options(outputs, 20, squared_error=squared_error, blocks=blocks)
    assert old == expected


def test_loss_defaults_and_the_relative_floor_by_dtype():
    assert loss_defaults("softmax_cross_entropy") == CLASSIFICATION_DEFAULTS
    assert loss_defaults("sigmoid_binary_cross_entropy") == CLASSIFICATION_DEFAULTS
    assert loss_defaults("squared_error") == OTHER_DEFAULTS
    assert loss_defaults(lambda o, y: jnp.sum(o - y)) == OTHER_DEFAULTS
    for solver in ("primal", "dual"):
        assert loss_defaults("softmax_cross_entropy", solver)["curvature_samples"] is None
    assert loss_defaults("softmax_cross_entropy", "cg")["curvature_samples"] == 32
    config = make_config()
    assert config.damping_floor(jnp.float64) == 10.0
    assert config.damping_floor(jnp.float32) == 0.1
    assert config.primal_floors(jnp.float32) == (0.1, 10.0)
    assert config.primal_floors(jnp.float64) == (10.0, None)
    assert make_config(relative_damping_floor=1.0).primal_floors(jnp.float32) == (1.0, None)
    # λ's ceiling stays finite in the dtype: √max of float32 under a huge option.
    assert make_config(max_damping=1e300).damping_bounds(jnp.float32)[1] == pytest.approx(
        float(np.finfo(np.float32).max) ** 0.5)


def test_names_that_lived_in_transform_still_import_from_there_with_a_warning():
    import importlib

    import ggn_jax.transform as transform

    for module, names in transform._MOVED.items():
        home = importlib.import_module(module)
        for name in names:
            with pytest.warns(DeprecationWarning, match=f"is {module}.{name}"):
                assert getattr(transform, name) is getattr(home, name)
    with pytest.raises(AttributeError, match="no attribute 'NOT_AN_OPTION'"):
        transform.NOT_AN_OPTION  # noqa: B018
