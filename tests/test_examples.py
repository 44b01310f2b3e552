"""Every script in examples/ runs and reaches what its docstring says."""

import os
import runpy

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _main(name):
    return runpy.run_path(os.path.join(EXAMPLES, f"{name}.py"), run_name="example")["main"]


def test_raw_jax_regression_reaches_1e_20():
    figures = _main("regression_raw_jax")()
    assert figures["loss"] < 1e-20 and figures["steps"] <= 10


def test_flax_classifier_reaches_95_percent_on_digits():
    pytest.importorskip("flax")
    pytest.importorskip("sklearn")
    figures = _main("flax_digits")(epochs=3)
    assert figures["accuracy"] >= 0.95


def test_equinox_pinn_solves_the_poisson_equation():
    pytest.importorskip("equinox")
    figures = _main("equinox_pinn")(max_steps=300)
    # Against the exact solution sin(πx), on a grid 20× finer than the
    # collocation points.
    assert figures["error"] < 2e-6 and figures["loss"] < 1e-8


def test_poisson2d_blocks_reach_1e_6_relative_error():
    figures = _main("poisson2d")(max_steps=150)
    # Relative L2 against sin(πx) sin(πy) on a 100×100 grid (the
    # discretisation floor of the 30×30 collocation grid is about 1e-7).
    assert figures["error"] < 2e-6 and figures["steps"] == 150
