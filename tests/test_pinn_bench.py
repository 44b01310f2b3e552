"""The PINN benchmark: its problems are the PDEs they claim (checked on the
exact solutions by finite differences), its ENGD peer takes the published
step, and a smoke run writes its tables."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err
from jax.flatten_util import ravel_pytree

from ggn_jax.bench import pinn
from ggn_jax.bench.pde_problems import PROBLEMS

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _fd_second(f, x, i, h=1e-3):
    e = np.zeros_like(x)
    e[i] = h
    return (f(x + e) - 2 * f(x) + f(x - e)) / h**2


def test_sources_match_the_exact_solutions_by_finite_differences():
    """−Δu = f (Poisson), u_t = ¼u_xx (heat), −u″ + u³ = f (nonlinear) for
    the exact u, with derivatives by central differences in numpy."""
    pi = math.pi
    x = np.array([0.31, 0.62])
    u = lambda z: np.sin(pi * z[0]) * np.sin(pi * z[1])
    lap = sum(_fd_second(u, x, i) for i in range(2))
    assert abs(-lap - 2 * pi**2 * u(x)) < 1e-4
    x5 = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    u5 = lambda z: np.sum(np.sin(pi * z))
    assert abs(-sum(_fd_second(u5, x5, i) for i in range(5)) - pi**2 * u5(x5)) < 1e-4
    heat = PROBLEMS["heat"]()
    z = np.array([0.4, 0.3])
    exact = lambda w: float(heat.exact(jnp.asarray(w)))
    u_t = (exact(z + [1e-5, 0]) - exact(z - [1e-5, 0])) / 2e-5
    assert abs(u_t - 0.25 * _fd_second(exact, z, 1)) < 1e-5
    # The problems' boundary and initial targets are the exact solution's.
    for problem in (PROBLEMS["poisson5d"](), heat):
        inputs, targets = problem.blocks.batch
        for name in problem.blocks.names:
            if targets[name] is not None:
                np.testing.assert_allclose(jax.vmap(problem.exact)(inputs[name]),
                                           targets[name], atol=1e-12)
            elif name != "interior":
                assert np.max(np.abs(jax.vmap(problem.exact)(inputs[name]))) < 1e-12


@pytest.mark.parametrize("line_search", pinn.ENGD_LINE_SEARCHES)
def test_engd_step_is_the_least_squares_direction_with_the_best_grid_step(line_search):
    """Both forms of the grid line search (all step lengths in one vmap, as
    published, or one after another) take the step length of least loss
    among 2⁻ᵏ, k = 0…30, each loss computed here in a Python loop."""
    problem = PROBLEMS["nonlinear"]()
    params = problem.net.init(jax.random.PRNGKey(0), jnp.float64)
    theta, unravel = ravel_pytree(params)
    new = pinn.engd_method(problem, 1, line_search=line_search).steps(params)
    # By hand: L = ½‖r̃‖², J = ∂r̃/∂θ by jacfwd of the whole vector.
    weighted = pinn._weighted_residuals(problem.blocks)
    r = lambda th: weighted(unravel(th))
    jac = jax.jacfwd(r)(theta)
    direction = np.linalg.pinv(np.asarray(jac.T @ jac)) @ np.asarray(jac.T @ r(theta))
    losses = [float(0.5 * jnp.sum(r(theta - 0.5**k * direction) ** 2)) for k in range(31)]
    expected = theta - 0.5 ** int(np.argmin(losses)) * direction
    # The Gram is ill-conditioned (its condition number is near 1/eps), so
    # two SVD-based least-squares solves agree only to a few digits.
    assert rel_err(ravel_pytree(new)[0], expected) < 1e-4
    assert rel_err(0.5 * jnp.sum(r(theta) ** 2), problem.blocks.loss(params)) < 1e-12
    # The form asked for: one step length after another is a loop (a scan)
    # in the program; all at once has none.
    search = pinn.engd_parts(problem, unravel, line_search=line_search).line_search
    program = str(jax.make_jaxpr(search)(theta, jnp.asarray(direction)))
    assert ("scan[" in program) == (line_search == "map")


def test_ggn_and_adam_are_scored_at_their_lowest_loss():
    """ggn's scored parameters are the iterate of least loss so far, Adam's
    the iterate of least loss among those it evaluated (all but the
    latest), by losses computed here with `blocks.loss`."""
    problem = PROBLEMS["nonlinear"]()
    params = problem.net.init(jax.random.PRNGKey(1), jnp.float64)
    for method, behind in ((pinn.ggn_method(problem, 1), 0),
                           (pinn.adam_method(problem, 1, 3e-2), 1)):
        state = method.init(params)
        iterates, losses, off_last = [ravel_pytree(params)[0]], [float(problem.blocks.loss(params))], 0
        for _ in range(30):
            state = method.steps(state)
            current = state[0]
            iterates.append(ravel_pytree(current)[0])
            losses.append(float(problem.blocks.loss(current)))
            considered = losses[:len(losses) - behind]
            best = int(np.argmin(considered))
            if sorted(considered)[1:2] and sorted(considered)[1] < considered[best] * (1 + 1e-9):
                continue  # a tie within round-off
            np.testing.assert_array_equal(ravel_pytree(method.params(state))[0], iterates[best])
            off_last += best != len(losses) - 1
        assert off_last >= 3  # both climbed above their lowest loss


def test_engd_parts_give_the_jacobian_and_gram_of_the_weighted_residuals():
    # The parts `benchmarks.step_parts` times one by one are ENGD's own:
    # J̃ against jacfwd of the whole weighted residual vector.
    problem = PROBLEMS["heat"]()
    params = problem.net.init(jax.random.PRNGKey(1), jnp.float64)
    theta, unravel = ravel_pytree(params)
    parts = pinn.engd_parts(problem, unravel)
    jac, residual = parts.jacobian(theta)
    weighted = pinn._weighted_residuals(problem.blocks)
    expected = jax.jacfwd(lambda th: weighted(unravel(th)))(theta)
    assert rel_err(jac, expected) < 1e-12
    assert rel_err(residual, weighted(params)) < 1e-12
    assert rel_err(parts.gram(jac), np.asarray(expected).T @ np.asarray(expected)) < 1e-12


def test_engd_cholesky_solve_is_the_floored_normal_equations():
    # solve="cholesky" solves (J̃ᵀJ̃ + eps·tr(J̃ᵀJ̃)·I + c·eps·P·diag(J̃ᵀJ̃)) d
    # = J̃ᵀr̃ (c = CHOLESKY_FLOOR): the matrix is ill conditioned, so the
    # check is the backward error, ‖Ad − g‖ against eps·‖A‖·‖d‖ (numpy's
    # product); where the Gram is well conditioned, d is the published
    # ENGD's least-squares direction and numpy's solve.
    problem = PROBLEMS["nonlinear"]()
    params = problem.net.init(jax.random.PRNGKey(0), jnp.float64)
    theta, unravel = ravel_pytree(params)
    parts = pinn.engd_parts(problem, unravel, solve="cholesky")
    jac, residual = parts.jacobian(theta)
    gram, grad = np.asarray(parts.gram(jac)), np.asarray(jac.T @ residual)
    eps, p = np.finfo(np.float64).eps, gram.shape[0]
    matrix = gram + np.diag(eps * np.trace(gram) + pinn.CHOLESKY_FLOOR * eps * p * np.diag(gram))
    d = np.asarray(parts.direction(jnp.asarray(gram), jnp.asarray(grad)))
    backward = np.linalg.norm(matrix @ d - grad) / (np.linalg.norm(matrix, 2) * np.linalg.norm(d))
    assert backward < 1e3 * np.finfo(np.float64).eps
    # Without the floor the same d is not a solution: the floor is applied.
    assert np.linalg.norm(gram @ d - grad) > 10 * np.linalg.norm(matrix @ d - grad)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    well = q @ np.diag(np.logspace(0, 3, 20)) @ q.T
    b = rng.standard_normal(20)
    published = pinn.engd_parts(problem, unravel).direction
    for direction in (parts.direction, published):
        assert rel_err(direction(jnp.asarray(well), jnp.asarray(b)), np.linalg.solve(well, b)) < 1e-10
    with pytest.raises(ValueError, match="solve must be one of"):
        pinn.engd_parts(problem, unravel, solve="qr")
    with pytest.raises(ValueError, match="line_search must be one of"):
        pinn.engd_parts(problem, unravel, line_search="scan")


def test_smoke_run_writes_tables(tmp_path):
    config = {
        "problem": {"name": "nonlinear"},
        "run": {"seeds": [0]},
        "optimizers": [
            {"kind": "ggn", "label": "ggn", "chunk": 5, "max_steps": 500, "max_seconds": 100.0},
            {"kind": "engd", "label": "engd", "chunk": 5, "max_steps": 500, "max_seconds": 100.0},
            {"kind": "adam", "label": "adam", "learning_rates": [1e-3, 1e-2], "chunk": 50,
             "max_steps": 5000, "max_seconds": 100.0},
            {"kind": "lbfgs", "label": "lbfgs", "chunk": 20, "max_steps": 2000,
             "max_seconds": 100.0},
        ],
    }
    results = pinn.run(config, smoke=True)
    assert set(results["summary"]) == {"ggn", "engd", "lbfgs", results["adam_best"]}
    for name, seeds in results["summary"].items():
        rows = results["runs"][name]["runs"][0]["rows"]
        assert rows[0][0] == 0 and rows[-1][0] >= 5 and all(np.isfinite(r[2]) for r in rows)
        # 'to 1e-4' is the first record at or below it, if any.
        seconds, steps = seeds[0]["to_0.0001"]
        hits = [row for row in rows if row[2] <= 1e-4]
        assert (steps, seconds) == ((hits[0][0], hits[0][1]) if hits else (math.inf, math.inf))
    text = pinn.markdown(results)
    assert text.count("\n| ") == 2 + len(results["summary"])  # header, rule, rows
    json.dumps(results, default=float)


def test_every_pinn_config_names_a_problem_and_known_optimisers():
    import glob

    paths = sorted(glob.glob(os.path.join(ROOT, "ggn_jax", "bench", "configs", "pinn", "*.toml")))
    assert len(paths) == 4
    for path in paths:
        config = pinn.load_pinn_config(path)
        assert config["problem"]["name"] in PROBLEMS
        kinds = {spec["kind"] for spec in config["optimizers"]}
        assert kinds == {"ggn", "engd", "adam", "lbfgs"}, path


@pytest.mark.parametrize("text, message", [
    ('[problem]\nname = "wave"\n', r"p.toml: problem.name = 'wave'; allowed: 'poisson2d'"),
    ('[problem]\nname = "heat"\n[[optimizers]]\nkind = "sgd"\n',
     r"optimizers\[0\].kind = 'sgd'; allowed: 'ggn', 'engd'"),
    ('[problem]\nname = "heat"\n[[optimizers]]\nkind = "ggn"\nlabel = "g"\n',
     r"optimizers\[0\].chunk is required"),
    ('[problem]\nname = "heat"\n', r"give \[\[optimizers\]\] tables"),
    ('[problem]\nname = "heat"\n[run]\nseeds = []\n', r"run.seeds must name at least one seed"),
    ('[problem]\nname = "heat"\n[[optimizers]]\nkind = "adam"\nlabel = "a"\nchunk = 5\n'
     'max_steps = 10\nmax_seconds = 1.0\nlearning_rates = []\n',
     r"optimizers\[0\].learning_rates must list at least one rate"),
    ('[problem]\nname = "heat"\n[[optimizers]]\nkind = "engd"\nlabel = "e"\nchunk = 5\n'
     'max_steps = 10\nmax_seconds = 1.0\ngrid = 0\n', r"optimizers\[0\].grid and .memory_size"),
    ('[problem]\nname = "heat"\n[[optimizers]]\nkind = "ggn"\nlabel = "g"\nchunk = 5\n'
     'max_steps = 10\nmax_seconds = -1.0\n', r"optimizers\[0\].max_seconds must be > 0"),
])
def test_a_bad_pinn_config_names_the_file_and_field(tmp_path, text, message):
    from ggn_jax.config import ConfigError

    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        pinn.load_pinn_config(str(path))
