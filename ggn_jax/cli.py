"""The ``ggn-jax`` command line.

    ggn-jax demo                  the paper's four-region experiment (the main job)
    ggn-jax demo --landscape      fraction of runs reaching exact learning vs width
    ggn-jax analyze --config F    conditions and critical-point report for a config
    ggn-jax bench --list          the shipped benchmark configs
    ggn-jax bench NAME|--all      benchmarks against the peers (ggn-jax bench --help)

Results go to ``results/`` (JSON and PNG plots; plots need matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def _float64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)")
        return None
    return plt


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path}")


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def demo_table(result) -> str:
    """The per-seed Markdown table of `paper_demo`."""
    lines = [
        "| seed | pure GGN: iterations to cost < 1e-15 | order | adaptive GGN: iterations "
        "| order | conditions at init (width, σ′, rank Φ, rank J) | rank Φ, rank J at end "
        "| adaptive end: ‖H−G‖/‖H‖ | zero eigenvalues of H | end point |",
        "| ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |",
    ]
    for s in result.seeds:
        c, e = s.conditions, s.end_conditions
        flags = "".join("✓" if ok else "✗" for ok in (
            c.width_holds, c.derivative_holds, c.hidden_rank_holds, c.jacobian_rank_holds))
        lines.append(
            f"| {s.seed} | {_fmt(s.pure_iterations, 'd')} | {s.pure_order:.2f} "
            f"| {_fmt(s.adaptive_iterations, 'd')} | {s.adaptive_order:.2f} "
            f"| {flags} | {e.hidden_rank}/{e.num_samples}, "
            f"{e.jacobian_rank}/{e.num_samples * e.num_outputs} "
            f"| {s.ggn_gap:.1e} | {s.num_zero} (P − T·K = {e.num_params - e.num_samples * e.num_outputs}) "
            f"| {s.final_kind} |"
        )
    return "\n".join(lines)


def _plot_demo(result, path: str) -> None:
    plt = _pyplot()
    if plt is None:
        return
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for s in result.seeds:
        for column, (costs, errors) in enumerate(
            ((s.pure_costs, s.pure_errors), (s.adaptive_costs, s.adaptive_errors))
        ):
            axes[0, column].semilogy(np.maximum(costs, 1e-40), marker=".", lw=1)
            axes[1, column].semilogy(np.maximum(errors[:-1], 1e-20), marker=".", lw=1)
    for column, name in enumerate(("pure GGN (δ = 1e-8 on the summed cost, step 1)", "adaptive GGN (default)")):
        axes[0, column].set_title(name)
        axes[0, column].axhline(1e-15, color="k", ls=":", lw=1)
        axes[0, column].set_ylabel("cost ½Σ‖o − y‖²")
        axes[1, column].set_ylabel("‖θ_k − θ*‖")
        axes[1, column].set_xlabel("iteration")
    fig.suptitle(
        f"Four-region, T = {result.num_samples}, MLP {list(result.sizes)} bent identity: "
        "one curve per seed"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def _demo(args: argparse.Namespace) -> int:
    _float64()
    import numpy as np

    from ggn_jax.paper.experiments import paper_demo

    try:  # the folder first: a run of minutes must not end in a bad path
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        print(f"error: --out {args.out}: cannot be a folder ({error.strerror})", file=sys.stderr)
        return 2
    if args.landscape:
        return _landscape(args)
    start = time.perf_counter()
    result = paper_demo(seeds=args.seeds, baseline_steps=args.baseline_steps,
                        progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(
        f"Four-region demo of Shen (2018): T = {result.num_samples} samples, MLP "
        f"{list(result.sizes)}, bent identity, squared loss, float64, {len(result.seeds)} seeds"
    )
    print(demo_table(result))
    print("\nconditions at the initial weights of seed 0 (our reading of the paper):")
    print(result.seeds[0].conditions.summary())
    adam, gd = result.adam_costs[:, -1], result.gd_costs[:, -1]
    steps = result.adam_costs.shape[1] - 1
    print(
        f"\nclassic backpropagation, {steps} steps: Adam (lr 1e-2) cost median "
        f"{np.median(adam):.1e} (best {adam.min():.1e}); gradient descent (lr 1e-3) "
        f"median {np.median(gd):.1e} (best {gd.min():.1e})"
    )
    pure = [s.pure_iterations for s in result.seeds]
    adaptive = [s.adaptive_iterations for s in result.seeds]
    reached = all(i is not None and i <= 20 for i in pure + adaptive)
    orders = min(min(s.pure_order, s.adaptive_order) for s in result.seeds)
    print(
        f"every seed below 1e-15 within 20 GGN iterations: {reached}; smallest "
        f"estimated order: {orders:.2f}; {elapsed:.1f} s"
    )
    os.makedirs(args.out, exist_ok=True)
    _write_json(os.path.join(args.out, "demo.json"), result.as_dict())
    _plot_demo(result, os.path.join(args.out, "demo_convergence.png"))
    return 0 if reached else 1


def _landscape(args: argparse.Namespace) -> int:
    from ggn_jax.paper.experiments import width_landscape

    start = time.perf_counter()
    result = width_landscape(runs=args.runs, progress=not args.quiet)
    t = result.num_samples
    print(
        f"Width landscape: four-region, T = {t}, MLP [2, w, 4] bent identity, "
        f"{result.runs} inits per width; fraction reaching mean loss < {result.threshold:g}"
    )
    print("| w | w/T | P − T·K | conditions hold | GGN | Adam | Adam median final loss |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w, g, a, c, m in zip(
        result.widths, result.ggn_fraction, result.adam_fraction, result.conditions_fraction,
        result.adam_median_loss,
    ):
        print(f"| {w} | {w / t:.2f} | {7 * w + 4 - 4 * t} | {c:.2f} | {g:.2f} | {a:.2f} | {m:.1e} |")
    print(f"{time.perf_counter() - start:.1f} s")
    os.makedirs(args.out, exist_ok=True)
    _write_json(os.path.join(args.out, "landscape.json"), result.as_dict())
    plt = _pyplot()
    if plt is not None:
        ratio = [w / t for w in result.widths]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(ratio, result.ggn_fraction, "o-", label="adaptive GGN")
        ax.plot(ratio, result.adam_fraction, "s-", label="Adam (lr 1e-2)")
        ax.plot(ratio, result.conditions_fraction, "k:", label="sufficient conditions hold")
        ax.axvline((4 * t - 4) / 7 / t, color="grey", ls="--", lw=1, label="P = T·K")
        ax.set_xlabel("last hidden width / T")
        ax.set_ylabel(f"fraction of runs with loss < {result.threshold:g}")
        ax.set_title(f"Exact learning of T = {t} four-region samples, MLP [2, w, 4]")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(args.out, "landscape.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    _float64()
    import jax
    import jax.numpy as jnp

    from ggn_jax.config import ANALYZE_SCHEMA, ConfigError, load_config
    from ggn_jax.fit import fit
    from ggn_jax.paper.analysis import critical_point, exact_learning_conditions
    from ggn_jax.paper.data import four_region, teacher_student
    from ggn_jax.paper.models import mlp

    try:
        config = load_config(args.config, ANALYZE_SCHEMA)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    net_cfg, data_cfg, run_cfg = config["network"], config["data"], config["analysis"]
    try:
        net = mlp(net_cfg["sizes"], net_cfg["activation"])
    except ValueError as error:
        print(f"error: {args.config}: network.{error}", file=sys.stderr)
        return 2
    if data_cfg["num_samples"] < 1 or run_cfg["max_steps"] < 0:
        print(f"error: {args.config}: data.num_samples must be ≥ 1 and analysis.max_steps ≥ 0",
              file=sys.stderr)
        return 2
    if not math.isfinite(run_cfg["tol"]):  # < 0: no early stop, as in fit
        print(f"error: {args.config}: analysis.tol must be finite, got {run_cfg['tol']}",
              file=sys.stderr)
        return 2
    key = jax.random.PRNGKey(data_cfg["seed"])
    if data_cfg["kind"] == "four_region":
        data = four_region(key, data_cfg["num_samples"], jnp.float64)
    else:
        try:
            data = teacher_student(key, data_cfg["num_samples"], data_cfg["teacher_sizes"],
                                   net_cfg["activation"], dtype=jnp.float64)
        except ValueError as error:
            print(f"error: {args.config}: data.teacher_sizes: {error}", file=sys.stderr)
            return 2
    if data.targets.shape[1] != net.sizes[-1] or data.inputs.shape[1] != net.sizes[0]:
        print(
            f"error: {args.config}: network.sizes {list(net.sizes)} does not fit the data "
            f"(inputs {data.inputs.shape[1]}, outputs {data.targets.shape[1]}; "
            "four_region has 2 and 4, teacher_student those of data.teacher_sizes)",
            file=sys.stderr,
        )
        return 2
    params = net.init(jax.random.PRNGKey(net_cfg["init_seed"]), jnp.float64, net_cfg["init_scale"])
    print(f"network {list(net.sizes)} ({net.activation.name}), {data_cfg['kind']} data, "
          f"T = {data_cfg['num_samples']}, P = {net.num_params}")
    print("\nexact-learning conditions at the initial weights (our reading of Shen 2018):")
    print(exact_learning_conditions(net, params, data.inputs).summary())
    batch = (data.inputs, data.targets)
    if run_cfg["fit_first"]:
        result = fit(net.apply, params, batch, max_steps=run_cfg["max_steps"], tol=run_cfg["tol"])
        # result.loss is the loss at result.params, the point analysed below
        # (the lowest reached; the last iterate's may be above it).
        print(f"\nfitted with GGN: {result.steps} steps, loss {float(result.loss):.2e}")
        params = result.params
    report = critical_point(net.apply, params, batch)
    print(
        f"\ncritical point: {report.kind}\n  loss {report.loss:.2e}, ‖∇L‖ {report.grad_norm:.2e}\n"
        f"  Hessian eigenvalues: {report.num_negative} negative, {report.num_zero} zero, "
        f"{report.num_positive} positive\n  ‖H − G‖/‖H‖ = {report.ggn_gap:.2e}"
    )
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ggn-jax", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.replace("``", ""))
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the paper's four-region experiment")
    demo.add_argument("--seeds", type=_positive_int, default=10, help="seeds (demo)")
    demo.add_argument("--baseline-steps", type=_positive_int, default=5000,
                      help="Adam and gradient-descent steps (demo)")
    demo.add_argument("--landscape", action="store_true", help="run the width landscape instead")
    demo.add_argument("--runs", type=_positive_int, default=20, help="inits per width (landscape)")
    demo.add_argument("--out", default="results",
                      help="folder for the JSON and the plots (default: results)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_demo)
    analyze = commands.add_parser("analyze", help="conditions and critical point for a config")
    analyze.add_argument("--config", required=True,
                         help="a TOML file, e.g. configs/analyze/paper_demo.toml")
    analyze.set_defaults(run=_analyze)
    # `bench` has its own parser (ggn_jax.bench.suite); listed here for --help.
    commands.add_parser("bench", add_help=False,
                        help="benchmarks against the peers: --list, NAME ..., --all, --device")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from ggn_jax.bench.suite import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
