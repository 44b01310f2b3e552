"""The benchmark runner: every shipped config runs (tiny), bad configs are
named, and the step-wise drivers reproduce each optimiser's own loop."""

import glob
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ggn_jax
from ggn_jax.bench.config import load_bench_config, smoke, validate_bench
from ggn_jax.bench.problems import CLASSIC, build_problem, mean_loss, residuals
from ggn_jax.bench.run import _trace_record, markdown, run_config, run_stepper
from ggn_jax.config import ConfigError

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIG_DIR = os.path.join(ROOT, "ggn_jax", "bench", "configs")
BENCH_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.toml")))
# kfac-jax 0.0.8 (the newest) fails inside its graph matcher on jax ≥ 0.9.2;
# the runner reports that as the row's result instead of stopping.
MAY_FAIL = ("kfac",)


# One tiny run per kind of problem (the digits one with the CNN and
# minibatches, the widest path): the other configs differ from these in
# sizes and options only, and each still loads and validates, below.
TINY_RUNS = ("classic_beale.toml", "digits_cnn_minibatch.toml", "over_parameterised.toml",
             "paper_demo.toml", "wide_regression.toml", "classify_synthetic.toml")
# This one runs every kind of optimiser of its config (the minibatch peers:
# the first row of each kind, since rows of one kind differ only in
# options, which are validated when the config loads); the least-squares
# peers run in full in tests/test_bench_suite.py. The other tiny runs take
# only their first ggn_jax row, for the problem kinds.
EVERY_PEER = ("digits_cnn_minibatch.toml",)


def _first_of_each_kind(optimizers):
    kinds = {}
    for spec in optimizers:
        kinds.setdefault(spec["kind"], spec)
    return list(kinds.values())


def test_every_config_loads_and_each_kind_has_a_tiny_run():
    kinds = {}
    for path in BENCH_CONFIGS:
        config = load_bench_config(path)
        problem = config["problem"]
        kinds.setdefault(problem["kind"], []).append(os.path.basename(path))
        assert config["optimizers"], path
    for names in kinds.values():
        assert set(names) & set(TINY_RUNS), names


@pytest.mark.parametrize("path", [p for p in BENCH_CONFIGS if os.path.basename(p) in TINY_RUNS],
                         ids=os.path.basename)
def test_every_kind_of_config_runs_in_a_tiny_version(path, tmp_path):
    config = smoke(load_bench_config(path))
    if os.path.basename(path) in EVERY_PEER:
        config["optimizers"] = _first_of_each_kind(config["optimizers"])
    else:
        config["optimizers"] = [s for s in config["optimizers"] if s["kind"].startswith("ggn")][:1]
    payload = run_config(config, quiet=True)
    assert set(payload["results"]) == {spec["label"] for spec in config["optimizers"]}
    for label, entry in payload["results"].items():
        if "skipped" in entry:
            assert "not installed" in entry["skipped"]
            continue
        if "failed" in entry:
            assert entry["kind"] in MAY_FAIL, (label, entry["failed"])
            continue
        record = entry["seeds"][config["run"]["seeds"][0]]
        trace = record["trace"]
        assert len(trace["loss"]) == len(trace["time"]) == record["steps_run"] + 1
        # Evaluated at the start and after every eval_stride-th step.
        assert np.all(np.isfinite(trace["loss"][::config["run"]["eval_stride"]])), label
        assert np.all(np.diff(trace["time"]) >= 0), label
    table = markdown(payload)
    assert all(label in table for label in payload["results"])


def test_ggn_jax_bench_finds_shipped_configs_by_name_from_any_directory(
        tmp_path, monkeypatch, capsys):
    from ggn_jax.cli import main as cli_main

    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert cli_main(["bench", "classic_beale", "--smoke", "--quiet",
                     "--out-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "classic_beale.json").read_text())
    assert payload["problem"].startswith("beale")
    assert (tmp_path / "classic_beale.md").read_text().startswith("### classic_beale")
    assert (tmp_path / "classic_beale.png").stat().st_size > 0
    assert cli_main(["bench", "no_such_config"]) == 2
    assert "not one of the shipped configs (classic_beale" in capsys.readouterr().err


BASE = {
    "problem": {"kind": "teacher_student", "num_samples": 8, "sizes": [2, 3, 1]},
    "run": {"target_loss": 1e-20},
    "optimizers": [{"kind": "ggn_fit"}],
}


def _with(section, **fields):
    raw = {key: (dict(value) if isinstance(value, dict) else list(value))
           for key, value in BASE.items()}
    if section == "optimizers":
        raw["optimizers"] = [fields]
    else:
        raw[section].update(fields)
    return raw


@pytest.mark.parametrize(
    "raw, message",
    [
        (_with("optimizers", kind="sgd"), r"b.toml: optimizers\[0\].kind = 'sgd'; allowed: 'ggn'"),
        (_with("optimizers", label="x"), r"optimizers\[0\].kind is required"),
        (_with("optimizers", kind="adam", solver="cg"),
         r"unknown field\(s\) optimizers\[0\].solver; allowed in \[optimizers\[0\]\]: kind, label, learning_rate"),
        (_with("optimizers", kind="ggn", damping="big"), r"optimizers\[0\].damping must be float, got 'big'"),
        (_with("optimizers", kind="jaxopt_lm", linear_solver="qr"), r"linear_solver = 'qr'; allowed: 'cg', 'cholesky'"),
        (_with("problem", kind="mnist"), r"problem.kind = 'mnist'; allowed: 'four_region'"),
        (_with("problem", sizes=[2]), r"problem.sizes needs at least input and output sizes"),
        (_with("problem", num_samples=0), r"problem.num_samples must be ≥ 1"),
        (_with("run", dtype="float16"), r"run.dtype = 'float16'; allowed: 'float32', 'float64'"),
        (_with("run", target_loss=0), r"give run.target_loss or run.target_accuracy"),
        (_with("run", target_accuracy=0.9), r"run.target_accuracy needs a test split"),
        (_with("run", batch_size=4), r"optimizers\[0\] \(kind 'ggn_fit'\) cannot take minibatches"),
        (_with("run", max_steps=0), r"run.max_steps must be ≥ 1"),
        (_with("run", seed=3), r"unknown field\(s\) run.seed; allowed in \[run\]"),
        ({**BASE, "output": {"plots": "yes"}}, r"output.plots must be bool, got 'yes'"),
        ({**BASE, "optimizers": []}, r"no \[\[optimizers\]\]; allowed kinds: ggn, ggn_fit"),
        ({**BASE, "optimizers": [{"kind": "adam"}, {"kind": "adam"}]}, r"labels must differ"),
        ({**BASE, "optimizers": {"kind": "adam"}}, r"optimizers must be a list of tables"),
        ({**BASE, "problem": {"kind": "digits", "sizes": [64, 10]},
          "optimizers": [{"kind": "scipy_trf"}]}, r"is a least-squares solver"),
        ({**BASE, "extra": {}}, r"unknown section\(s\) extra"),
        # Right types, values out of range: each named, none left to fail
        # (or hang) mid-run.
        (_with("run", target_loss=float("nan")), r"run.target_loss must be finite and ≥ 0"),
        (_with("run", seeds=[]), r"run.seeds must name at least one seed"),
        (_with("run", max_seconds=-1.0), r"run.max_seconds must be > 0, got -1.0"),
        ({"problem": {"kind": "digits", "sizes": [64, 10], "test_fraction": 0.0},
          "run": {"target_accuracy": 0.9}, "optimizers": [{"kind": "adam"}]},
         r"problem.test_fraction must lie in \(0, 1\)"),
        (_with("optimizers", kind="adam", learning_rate=0.0),
         r"optimizers\[0\] \(kind 'adam'\): learning_rate must be finite and > 0"),
        (_with("optimizers", kind="lbfgs", memory_size=0), r"memory_size must be ≥ 1"),
        (_with("optimizers", kind="ggn_fit", damping=-1.0),
         r"optimizers\[0\] \(kind 'ggn_fit'\): damping must be finite and > 0"),
        (_with("optimizers", kind="ggn", cg_max_iters=0), r"cg_max_iters must be a positive integer"),
        (_with("optimizers", kind="ggn", cross_batch_damping="gradual"),
         r"optimizers\[0\].cross_batch_damping = 'gradual'; allowed: true, false, 'graded'"),
        # 1 == True in Python, but a config that writes 1 for true is refused
        (_with("optimizers", kind="ggn", cross_batch_damping=1),
         r"optimizers\[0\].cross_batch_damping = 1; allowed: true, false, 'graded'"),
        (_with("optimizers", kind="ggn", geodesic_acceleration=1),
         r"optimizers\[0\].geodesic_acceleration must be bool, got 1"),
    ],
)
def test_bad_configs_name_the_file_field_and_allowed_values(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate_bench(raw, "b.toml")


def test_a_minibatch_larger_than_the_training_set_is_named_not_run(tmp_path):
    """16 samples in batches of 64: named before anything runs (the batch
    generator used to loop for ever looking for a whole batch)."""
    raw = {"problem": {"kind": "teacher_student", "num_samples": 16, "sizes": [2, 3, 1]},
           "run": {"target_loss": 1e-20, "batch_size": 64},
           "optimizers": [{"kind": "adam"}], "output": {"dir": str(tmp_path)}}
    with pytest.raises(ConfigError, match=r"^b: run.batch_size \(64\) exceeds the 16 "
                                          "training samples of its problem"):
        run_config(validate_bench(raw, "b.toml"), quiet=True)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="absent.toml: no such config file"):
        load_bench_config(str(tmp_path / "absent.toml"))


def test_time_to_target_is_read_off_the_trace():
    run = {"target_loss": 1e-3, "target_accuracy": 0.0}
    losses = [1.0, 1e-1, 1e-2, 1e-4, 1e-5]
    times = [0.0, 0.5, 1.0, 1.5, 2.0]
    record = _trace_record(losses, [np.nan] * 5, times, run, 0.1, None)
    assert record["steps_to_target"] == 3 and record["time_to_target"] == 1.5
    assert record["per_step_s"] == 0.5 and record["final_accuracy"] is None
    missed = _trace_record(losses[:3], [np.nan] * 3, times[:3], run, 0.1, None)
    assert not missed["reached"] and missed["time_to_target"] is None


def _small(kind="teacher_student"):
    config = validate_bench(_with("problem", kind=kind), "t.toml")
    return build_problem(config["problem"], jnp.float64)


RUN = {"target_loss": 1e-30, "target_accuracy": 0.0, "max_steps": 6, "max_seconds": 60.0,
       "eval_every": 3, "batch_size": 0, "repeats": 1}


def test_the_adam_driver_matches_a_plain_optax_loop():
    problem = _small()
    record = run_stepper(problem, {"kind": "adam", "label": "a", "learning_rate": 1e-2},
                         RUN, seed=0, quiet=True)
    params = problem.init(0)
    tx = optax.adam(1e-2)
    state = tx.init(params)
    expected = [float(mean_loss(problem, params, problem.train))]
    for _ in range(6):
        grads = jax.grad(lambda p: mean_loss(problem, p, problem.train))(params)
        updates, state = tx.update(grads, state)
        params = optax.apply_updates(params, updates)
        expected.append(float(mean_loss(problem, params, problem.train)))
    np.testing.assert_allclose(record["trace"]["loss"], expected, rtol=1e-12)


def test_an_unrolled_chunk_takes_the_same_steps_as_the_loop():
    """run.unroll compiles a chunk's steps one after another: the same
    losses as the compiled loop (checked against plain optax above). The two
    programs may round differently (JAX 0.8 does, 0.10 does not here), and
    quadratic convergence doubles the digits of that difference each step:
    as in the test below, 1e-6 until the losses fall under 1e-15 of the
    first."""
    problem = _small()
    for spec in ({"kind": "adam", "label": "a", "learning_rate": 1e-2},
                 {"kind": "ggn", "label": "g"}):
        looped = run_stepper(problem, spec, RUN, seed=0, quiet=True)
        unrolled = run_stepper(problem, spec, {**RUN, "unroll": True}, seed=0, quiet=True)
        first = looped["trace"]["loss"][0]
        np.testing.assert_allclose(unrolled["trace"]["loss"], looped["trace"]["loss"],
                                   rtol=1e-6, atol=1e-15 * first)


@pytest.mark.parametrize("caller_gradient", [False, True])
def test_the_ggn_driver_matches_a_plain_optax_loop(caller_gradient):
    """The driver hands update None (or, with caller_gradient, jax.grad);
    either way the losses of a loop that hands it jax.grad. The two are
    compiled differently (a scan against one step at a time), so they
    differ in round-off, and quadratic convergence doubles the digits of
    that difference each step: the losses agree to 1e-6 until they fall
    under 1e-15 of the first (1e-20, where it reaches 5e-4)."""
    problem = _small()
    spec = {"kind": "ggn", "label": "g", "caller_gradient": caller_gradient}
    record = run_stepper(problem, spec, RUN, seed=0, quiet=True)
    params = problem.init(0)
    tx = ggn_jax.ggn(problem.apply_fn, problem.loss)
    state = tx.init(params)
    loss = lambda p: mean_loss(problem, p, problem.train)
    expected = [float(loss(params))]
    for _ in range(6):
        updates, state = tx.update(jax.grad(loss)(params), state, params, batch=problem.train)
        params = optax.apply_updates(params, updates)
        expected.append(float(loss(params)))
    assert expected[-1] < 1e-3 * expected[0]
    np.testing.assert_allclose(record["trace"]["loss"], expected, rtol=1e-6,
                               atol=1e-15 * expected[0])


@pytest.mark.skipif(importlib.util.find_spec("jaxopt") is None, reason="jaxopt not installed")
def test_the_jaxopt_driver_matches_jaxopt_run():
    import jaxopt

    problem = _small()
    spec = {"kind": "jaxopt_lm", "label": "j", "linear_solver": "cholesky"}
    record = run_stepper(problem, spec, RUN, seed=0, quiet=True)
    theta0, unravel = jax.flatten_util.ravel_pytree(problem.init(0))
    lm = jaxopt.LevenbergMarquardt(lambda th: residuals(problem, unravel(th), problem.train),
                                   maxiter=6, tol=0.0, xtol=0.0, gtol=0.0, solver="cholesky",
                                   materialize_jac=True)
    final = lm.run(theta0).params
    expected = float(mean_loss(problem, unravel(final), problem.train))
    assert record["trace"]["loss"][-1] == pytest.approx(expected, rel=1e-10)


@pytest.mark.skipif(importlib.util.find_spec("optimistix") is None,
                    reason="optimistix not installed")
def test_the_optimistix_driver_matches_least_squares():
    import optimistix as optx

    problem = _small()
    record = run_stepper(problem, {"kind": "optimistix_lm", "label": "o"}, RUN, seed=0,
                         quiet=True)
    theta0, unravel = jax.flatten_util.ravel_pytree(problem.init(0))
    solution = optx.least_squares(
        lambda th, _: residuals(problem, unravel(th), problem.train),
        optx.LevenbergMarquardt(rtol=0.0, atol=0.0), theta0, max_steps=6, throw=False)
    expected = float(mean_loss(problem, unravel(solution.value), problem.train))
    assert record["trace"]["loss"][-1] == pytest.approx(expected, rel=1e-10)


def test_residuals_give_the_mean_loss_and_classic_problems_their_minimum():
    problem = _small()
    params = problem.init(0)
    r = residuals(problem, params, problem.train)
    assert 0.5 * float(r @ r) == pytest.approx(float(mean_loss(problem, params, problem.train)),
                                               rel=1e-12)
    config = validate_bench({**BASE, "problem": {"kind": "classic", "name": "beale"}}, "c.toml")
    beale = build_problem(config["problem"], jnp.float64)
    at_minimum = jnp.asarray(CLASSIC["beale"].minimiser)
    assert float(mean_loss(beale, at_minimum, beale.train)) == pytest.approx(0.0, abs=1e-30)
    start = beale.init(0)
    by_hand = 0.5 * sum(float(v) ** 2 for v in CLASSIC["beale"].residual(start))
    assert float(mean_loss(beale, start, beale.train)) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn needed")
def test_digits_split_is_stratified_and_scaled():
    config = validate_bench({**BASE, "problem": {"kind": "digits", "sizes": [64, 10]},
                             "run": {"target_accuracy": 0.9},
                             "optimizers": [{"kind": "adam"}]}, "d.toml")
    problem = build_problem(config["problem"], jnp.float32)
    (x, _), (xt, yt) = problem.train, problem.test
    assert x.shape == (1347, 64) and xt.shape == (450, 64)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0 and x.dtype == jnp.float32
    from sklearn.datasets import load_digits

    # Stratified: each digit's test share is a quarter of its count, ±1.
    counts = np.bincount(load_digits().target)
    assert np.all(np.abs(np.bincount(np.asarray(yt)) - 0.25 * counts) <= 1)


def test_every_ggn_option_a_config_accepts_reaches_ggn():
    """A config's ggn fields (weight_decay among them) are all handed to
    `ggn_jax.ggn`, and each is one of its keywords: the two lists of names
    (the schema and the driver) cannot drift apart unnoticed."""
    import inspect

    from ggn_jax.bench.config import OPTIMIZER_FIELDS
    from ggn_jax.bench.optimizers import _ggn_options

    fields = set(OPTIMIZER_FIELDS["ggn_fit"])
    assert "weight_decay" in fields
    assert set(_ggn_options({name: 1 for name in fields})) == fields
    assert fields <= set(inspect.signature(ggn_jax.ggn).parameters)
