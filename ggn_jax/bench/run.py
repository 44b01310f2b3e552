"""Runs one benchmark config: every optimiser it names on its problem.

Run: ``ggn-jax bench NAME`` (a shipped config, `ggn_jax.bench.catalog`) or
``ggn-jax bench path/to/own.toml``; ``--device gpu`` picks JAX's GPU,
``--smoke`` a tiny version for tests. ``ggn-jax bench --all`` runs every
shipped config (`ggn_jax.bench.suite`).

For each optimiser and seed: compile apart (ahead of time, ``lower`` then
``compile``), one warm-up chunk, then ``repeats`` timed runs with
``block_until_ready`` after every chunk of ``eval_every`` steps, of which
the run with the median time is kept (the lower median of an even count:
with 2 repeats, the faster run). The parameters after each step come out
of the compiled chunk, and the loss and test accuracy at each are computed
afterwards, off the clock, by one shared function. Steps inside a chunk are taken as equally long. A run stops at
the target (loss ≤ target_loss and/or test accuracy ≥ target_accuracy), at
max_steps, or at max_seconds.

Writes DIR/NAME.json (everything, with the traces), DIR/NAME.md (a table
for BENCHMARKS.md) and DIR/NAME.png (loss against wall time and steps).
The JSON is rewritten after every optimiser, so an interrupted run (Ctrl-C)
keeps the rows it finished, marked ``"interrupted"``.

Besides the time to the target, each result carries the device
(`ggn_jax.bench.common.device_info`), the device's own memory peak where
the backend keeps one, compile times apart, and the achieved FLOP/s of the
curvature work: the sample-space Gram matrix J̄J̄ᵀ of one batch, its FLOPs
from XLA's cost analysis over its median wall time, against the card's
data-sheet peak where the device kind is known. A step whose compiled
program needs more memory than the device has is not run; its row says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ggn_jax
from ggn_jax.bench.common import (
    device_info,
    lower_median,
    machine,
    median_words,
    peak_flops,
)
from ggn_jax.bench.optimizers import (
    PEER_MODULES,
    WHOLE_RUN_KINDS,
    Stepper,
    compiled_memory,
    make_stepper,
    run_whole,
)
from ggn_jax.bench.problems import BenchProblem, accuracy, build_problem, mean_loss
from ggn_jax.config import ConfigError


class DoesNotFit(Exception):
    """A compiled program needs more memory than the device has."""


def _check_fits(memory: int | None) -> None:
    limit = device_info()["memory_bytes"]
    if memory is not None and limit is not None and memory > limit:
        raise DoesNotFit(f"needs {_fmt_bytes(memory)} of device memory, the device has "
                         f"{_fmt_bytes(limit)}")


def _flops(compiled) -> float | None:
    """XLA's FLOP estimate of a compiled program (None where not given)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per module
        analysis = analysis[0] if analysis else None
    value = (analysis or {}).get("flops")
    return float(value) if value and value > 0 else None


def curvature_rate(problem: BenchProblem, run: dict, seed: int, max_samples: int = 1024,
                   repeats: int = 5) -> dict:
    """Achieved FLOP/s of the curvature work on one batch: the Gram matrix
    J̄J̄ᵀ (`ggn_jax.gram_matrix`) of a minibatch (or of the first
    ``max_samples`` training samples), FLOPs by XLA's cost analysis, time
    the median of ``repeats`` runs after a warm-up."""
    inputs = problem.train[0]
    n = min(run["batch_size"] or max_samples, max_samples,
            jax.tree_util.tree_leaves(inputs)[0].shape[0])
    inputs = jax.tree_util.tree_map(lambda a: a[:n], inputs)
    params = problem.init(seed)
    what = f"Gram matrix J̄J̄ᵀ of {n} samples"
    try:
        compiled = jax.jit(lambda p, x: ggn_jax.gram_matrix(problem.apply_fn, p, x)) \
            .lower(params, inputs).compile()
        jax.block_until_ready(compiled(params, inputs))
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            jax.block_until_ready(compiled(params, inputs))
            times.append(time.perf_counter() - begin)
    except Exception as error:
        return {"what": what, "failed": f"{type(error).__name__}: {str(error)[:200]}"}
    seconds = statistics.median(times)
    flops = _flops(compiled)
    peak = peak_flops(device_info()["device_kind"], run["dtype"])
    rate = flops / seconds if flops and seconds > 0 else None
    return {"what": what, "flops": flops, "seconds": seconds, "flop_s": rate,
            "peak_flop_s": peak, "peak_fraction": rate / peak if rate and peak else None}


def _progress(total: int, label: str, quiet: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with the bench and test extras
        return None
    return tqdm(total=total, desc=label, disable=quiet, leave=False, file=sys.stderr)


def _evaluator(problem: BenchProblem):
    """Loss on the training set and accuracy on the test split (NaN without
    one) at each of a stack of parameters."""

    def one(params):
        loss = mean_loss(problem, params, problem.train)
        acc = accuracy(problem, params, problem.test) if problem.test else jnp.nan
        return loss, acc

    return jax.jit(jax.vmap(one))


def check_batch_size(config: dict, source: str, problem: BenchProblem | None = None) -> None:
    """A `ConfigError` naming ``source`` where ``run.batch_size`` exceeds the
    training samples of the config's problem (built in float32 to count
    them where ``problem`` is not given)."""
    batch = config["run"]["batch_size"]
    if not batch:
        return
    if problem is None:
        problem = build_problem(config["problem"], jnp.float32)
    samples = jax.tree_util.tree_leaves(problem.train[0])[0].shape[0]
    if batch > samples:
        raise ConfigError(f"{source}: run.batch_size ({batch}) exceeds the {samples} training "
                          "samples of its problem")


def _minibatches(problem: BenchProblem, batch_size: int, seed: int):
    """Index sets of one minibatch each, reshuffled every epoch."""
    n = problem.train[0].shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"a minibatch of {batch_size} from {n} training samples")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for i in range(n // batch_size):
            yield order[i * batch_size:(i + 1) * batch_size]


def _chunk_data(problem: BenchProblem, batches, length: int):
    if batches is None:
        return problem.train
    index = jnp.asarray(np.stack([next(batches) for _ in range(length)]))
    inputs, targets = problem.train
    return inputs[index], targets[index]


def _chunk_fn(stepper: Stepper, length: int, minibatch: bool, unroll: bool = False):
    """``length`` steps; returns the state and the params after each step.
    ``unroll``: the steps compiled one after another, not as a loop."""

    def body(state, batch):
        state = stepper.step(state, batch)
        return state, stepper.params(state)

    if not stepper.jittable:
        def host_chunk(state, data):
            stacked = []
            for j in range(length):
                batch = jax.tree_util.tree_map(lambda a, j=j: a[j], data) if minibatch else data
                state, params = body(state, batch)
                # A copy: a host-driven step may donate the buffers it reads.
                stacked.append(jax.tree_util.tree_map(jnp.copy, params))
            return state, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stacked)
        return host_chunk

    def chunk(state, data):
        if minibatch:
            return jax.lax.scan(body, state, data, unroll=unroll)
        return jax.lax.scan(lambda s, _: body(s, data), state, None, length=length,
                            unroll=unroll)

    return jax.jit(chunk)


def _as_step_output(stepper: Stepper, state, batch):
    """``state`` cast to the types a step returns (no weak types; jaxopt's
    initial state, for one, holds an int where its steps hold a float), so
    that the compiled chunk accepts its own output."""
    out = jax.eval_shape(stepper.step, state, batch)
    return jax.tree_util.tree_map(
        lambda a, o: jax.lax.convert_element_type(a, o.dtype), state, out)


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def _first_reached(losses, accuracies, run: dict) -> int | None:
    """The first step index whose loss and accuracy meet the targets."""
    ok = np.ones(len(losses), bool)
    if run["target_loss"] > 0:
        ok &= np.asarray(losses) <= run["target_loss"]
    if run["target_accuracy"] > 0:
        ok &= np.asarray(accuracies) >= run["target_accuracy"]
    hits = np.flatnonzero(ok)
    return int(hits[0]) if hits.size else None


def _trace_record(losses, accs, times, run: dict, compile_s, memory) -> dict:
    reached = _first_reached(losses, accs, run)
    steps = len(losses) - 1
    return {
        "reached": reached is not None,
        "steps_to_target": reached,
        "time_to_target": times[reached] if reached is not None else None,
        "steps_run": steps,
        "run_s": times[-1],
        "per_step_s": times[-1] / steps if steps else None,
        "compile_s": compile_s,
        "final_loss": float(losses[-1]),
        "final_accuracy": None if np.isnan(accs[-1]) else float(accs[-1]),
        "memory_bytes": memory,
        "trace": {"loss": [float(v) for v in losses], "accuracy": [float(v) for v in accs],
                  "time": [float(v) for v in times]},
    }


def run_stepper(problem: BenchProblem, spec: dict, run: dict, seed: int, quiet: bool) -> dict:
    """One optimiser on one seed, ``repeats`` times; the median run's record."""
    params0 = problem.init(seed)
    stepper = make_stepper(problem, spec, params0)
    minibatch = run["batch_size"] > 0
    length = run["eval_every"]
    chunk = _chunk_fn(stepper, length, minibatch, run.get("unroll", False))
    evaluate = _evaluator(problem)
    init = jax.jit(lambda p, b: _as_step_output(stepper, stepper.init(p, b), b)) \
        if stepper.jittable else stepper.init

    def start_state():
        return jax.block_until_ready(init(params0, problem.train))

    def batches():
        return _minibatches(problem, run["batch_size"], seed) if minibatch else None

    state = start_state()
    data = _chunk_data(problem, batches(), length)
    begin = time.perf_counter()
    if stepper.jittable:
        chunk = chunk.lower(state, data).compile()
        compile_s = time.perf_counter() - begin
        memory = compiled_memory(chunk)
        _check_fits(memory)
        jax.block_until_ready(chunk(state, data))  # warm-up
    else:  # compiles itself on its first steps: count them as compile time
        jax.block_until_ready(chunk(state, data))
        begin_run = time.perf_counter()
        jax.block_until_ready(chunk(start_state(), data))
        run_once = time.perf_counter() - begin_run
        compile_s = max(begin_run - begin - run_once, 0.0)
        memory = None

    loss0, acc0 = (np.asarray(v)[0] for v in evaluate(jax.tree_util.tree_map(
        lambda a: a[None], params0)))
    records = []
    for repeat in range(run["repeats"]):
        state, stream = start_state(), batches()
        losses, accs, times = [loss0], [acc0], [0.0]
        bar = _progress(run["max_steps"], f"{spec['label']} seed {seed}", quiet or repeat > 0)
        while len(losses) - 1 < run["max_steps"] and times[-1] < run["max_seconds"]:
            data = _chunk_data(problem, stream, length)
            begin = time.perf_counter()
            state, stacked = chunk(state, data)
            jax.block_until_ready(state)
            spent = time.perf_counter() - begin
            chunk_losses, chunk_accs = _evaluate_chunk(evaluate, stacked, length,
                                                       run.get("eval_stride", 1))
            elapsed = times[-1]
            losses += list(chunk_losses)
            accs += list(chunk_accs)
            times += [elapsed + spent * (j + 1) / length for j in range(length)]
            if bar is not None:
                bar.update(length)
                bar.set_postfix(loss=f"{losses[-1]:.3g}")
            if _first_reached(chunk_losses, chunk_accs, run) is not None:
                break
        if bar is not None:
            bar.close()
        keep = min(len(losses), run["max_steps"] + 1)
        records.append(_trace_record(losses[:keep], accs[:keep], times[:keep], run,
                                     compile_s, memory))
    return _median_record(records)


def _evaluate_chunk(evaluate, stacked, length: int, stride: int):
    """Loss and accuracy after each step of a chunk; with a stride s > 1
    only after every s-th step (the others NaN), for data sets whose
    evaluation would cost more than the steps."""
    if stride == 1:
        return (np.asarray(v) for v in evaluate(stacked))
    picked = jax.tree_util.tree_map(lambda a: a[stride - 1::stride], stacked)
    losses, accs = np.full(length, np.nan), np.full(length, np.nan)
    values = [np.asarray(v) for v in evaluate(picked)]
    losses[stride - 1::stride], accs[stride - 1::stride] = values
    return losses, accs


def _median_record(records: list[dict]) -> dict:
    """The run with the median time (to the target, else in all); the lower
    median of an even count (`ggn_jax.bench.common.lower_median`)."""
    return lower_median(records, key=lambda r: r["time_to_target"] if r["reached"] else r["run_s"])


def run_whole_optimizer(problem: BenchProblem, spec: dict, run: dict, seed: int) -> dict:
    params0 = problem.init(seed)
    evaluate = _evaluator(problem)
    at = lambda params: (np.asarray(v)[0] for v in evaluate(
        jax.tree_util.tree_map(lambda a: a[None], params)))
    loss0, acc0 = at(params0)
    result = run_whole(problem, spec, params0, run["target_loss"], run["max_steps"],
                       run["repeats"])
    final_loss, final_acc = at(result.params)
    losses = [float(loss0)] + list(result.losses)
    if len(losses) > 1:
        losses[-1] = float(final_loss)  # measured by the shared function
    accs = [acc0] + [np.nan] * (len(losses) - 2) + [final_acc] if len(losses) > 1 else [acc0]
    return _trace_record(losses, accs, [0.0] + list(result.times), run, result.compile_s,
                         result.memory_bytes)


def run_config(config: dict, quiet: bool = False, on_row=None) -> dict:
    """Every optimiser on every seed of ``config``; the results as a dict.

    ``on_row(payload)`` is called after each optimiser with the results so
    far (the runner writes them out then). A KeyboardInterrupt stops the
    run and returns what finished, with ``payload["interrupted"]`` naming
    the optimiser it stopped in.
    """
    run = config["run"]
    if run["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    problem = build_problem(config["problem"], jnp.dtype(run["dtype"]))
    check_batch_size(config, config["output"]["name"], problem)
    results: dict[str, Any] = {}
    payload = {
        "name": config["output"]["name"],
        "machine": machine(),
        "device": device_info(),
        "device_peak_bytes": None,
        "problem": problem.description,
        "run": run,
        "optimizers": config["optimizers"],
        "results": results,
        "curvature_rate": None,
        "interrupted": None,
    }
    label = None
    try:
        payload["curvature_rate"] = curvature_rate(problem, run, run["seeds"][0])
        for spec in config["optimizers"]:
            label = spec["label"]
            results[label] = _run_optimizer(problem, spec, run, quiet)
            payload["device_peak_bytes"] = _device_peak()
            if on_row is not None:
                on_row(payload)
    except KeyboardInterrupt:
        payload["interrupted"] = label or "before the first optimiser"
        print(f"\ninterrupted in {payload['interrupted']!r}: keeping the "
              f"{len(results)} finished row(s)", file=sys.stderr)
    payload["device_peak_bytes"] = _device_peak()
    return payload


def _run_optimizer(problem: BenchProblem, spec: dict, run: dict, quiet: bool) -> dict:
    """One optimiser on every seed: its result entry (``seeds``, or
    ``skipped`` / ``failed`` with the reason)."""
    label = spec["label"]
    module = PEER_MODULES[spec["kind"]]
    if module is not None and importlib.util.find_spec(module) is None:
        print(f"[{label}] skipped: {module} is not installed", file=sys.stderr)
        extra = "kfac" if module == "kfac_jax" else "bench"
        return {"kind": spec["kind"], "skipped": f"{module} is not installed "
                f"(pip install 'ggn_jax[{extra}]')"}
    per_seed = {}
    for seed in run["seeds"]:
        if quiet is False:
            print(f"[{label}] seed {seed} ...", file=sys.stderr, flush=True)
        try:
            if spec["kind"] in WHOLE_RUN_KINDS:
                per_seed[seed] = run_whole_optimizer(problem, spec, run, seed)
            else:
                per_seed[seed] = run_stepper(problem, spec, run, seed, quiet)
        except DoesNotFit as error:
            print(f"[{label}] skipped: {error}", file=sys.stderr)
            return {"kind": spec["kind"], "skipped": f"does not fit: {error}"}
        except Exception as error:  # a peer's failure is a result
            if spec["kind"] in ("ggn", "ggn_fit"):
                raise
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            print(f"[{label}] failed: {message}", file=sys.stderr)
            return {"kind": spec["kind"], "failed": message}
    return {"kind": spec["kind"], "seeds": per_seed}


def summarise(entry: dict) -> dict | None:
    """Medians over seeds of one optimiser's records, with the reached count."""
    if "seeds" not in entry:
        return None
    records = list(entry["seeds"].values())
    reached = [r for r in records if r["reached"]]
    med = lambda values: statistics.median(values) if values else None
    return {
        "reached": len(reached),
        "seeds": len(records),
        "steps_to_target": med([r["steps_to_target"] for r in reached]),
        "time_to_target": med([r["time_to_target"] for r in reached]),
        "steps_run": med([r["steps_run"] for r in records]),
        "run_s": med([r["run_s"] for r in records]),
        "per_step_s": med([r["per_step_s"] for r in records if r["per_step_s"]]),
        # The first seed compiles; later ones may hit a cache.
        "compile_s": max(r["compile_s"] for r in records),
        "final_loss": med([r["final_loss"] for r in records]),
        "final_accuracy": med([r["final_accuracy"] for r in records
                               if r["final_accuracy"] is not None]),
        "memory_bytes": max((r["memory_bytes"] for r in records if r["memory_bytes"]),
                            default=None),
    }


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 0.01:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _fmt_bytes(count: int | None) -> str:
    if count is None:
        return "n/a"
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"


def _targets(run: dict) -> str:
    parts = []
    if run["target_loss"] > 0:
        parts.append(f"mean loss ≤ {run['target_loss']:g}")
    if run["target_accuracy"] > 0:
        parts.append(f"test accuracy ≥ {run['target_accuracy']:.0%}")
    return " and ".join(parts)


def markdown(payload: dict) -> str:
    """The results as a Markdown table; ratios are to the first optimiser."""
    run = payload["run"]
    summaries = {label: summarise(entry) for label, entry in payload["results"].items()}
    reference = next(iter(summaries.values()), None)
    batch = f"minibatch {run['batch_size']}" if run["batch_size"] else "full batch"
    lines = [
        f"### {payload['name']}: {payload['problem']}",
        "",
        f"{run['dtype']}, {batch}, target: {_targets(run)}; seeds {run['seeds']}, "
        f"{median_words(run['repeats'])} per seed"
        f"{'; the steps of a chunk compiled unrolled' if run.get('unroll') else ''}. "
        f"Machine: {payload['machine']}.",
        "",
        *_interrupted_lines(payload),
        *_rate_lines(payload),
        "Memory: what the compiled chunk of steps (or fit's program) needs, arguments, "
        "outputs and temporaries, by XLA's memory analysis"
        + (f"; the device's peak over the whole run: {_fmt_bytes(payload['device_peak_bytes'])}."
           if payload["device_peak_bytes"] else " (this backend reports no device peak)."),
        "",
        "| optimiser | reached | steps to target | time to target | per step | compile "
        "| final loss | test acc. | memory | time ÷ first row's |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ref_time = reference["time_to_target"] if reference else None
    for label, entry in payload["results"].items():
        s = summaries[label]
        if s is None:
            why = entry.get("skipped") or f"failed: {entry['failed']}"
            lines.append(f"| {label} | {why} | | | | | | | | |")
            continue
        if s["time_to_target"] is not None and ref_time:
            ratio = f"{s['time_to_target'] / ref_time:.2f}×"
        elif ref_time and s["run_s"]:
            ratio = f"≥ {s['run_s'] / ref_time:.2f}×"  # missed: a lower bound
        else:
            ratio = "—"
        acc = "—" if s["final_accuracy"] is None else f"{s['final_accuracy']:.1%}"
        steps = "—" if s["steps_to_target"] is None else f"{s['steps_to_target']:g}"
        lines.append(
            f"| {label} | {s['reached']}/{s['seeds']} | {steps} | "
            f"{_fmt_time(s['time_to_target'])} | {_fmt_time(s['per_step_s'])} | "
            f"{_fmt_time(s['compile_s'])} | {s['final_loss']:.2e} | {acc} | "
            f"{_fmt_bytes(s['memory_bytes'])} | {ratio} |"
        )
    ours = [s["time_to_target"] for label, s in summaries.items()
            if s and s["time_to_target"] and payload["results"][label]["kind"].startswith("ggn")]
    peers = {label: s["time_to_target"] for label, s in summaries.items()
             if s and s["time_to_target"] and not payload["results"][label]["kind"].startswith("ggn")}
    if ours and peers:
        fastest = min(peers, key=peers.get)
        lines += ["", f"Fastest peer to the target: {fastest}, "
                  f"{peers[fastest] / min(ours):.2f}× the time of the fastest ggn_jax row."]
    elif ours:
        lines += ["", "No peer reached the target."]
    lines += _adam_sweep(payload, summaries)
    lines.append("")
    return "\n".join(lines)


def _interrupted_lines(payload: dict) -> list[str]:
    if not payload.get("interrupted"):
        return []
    return [f"**Interrupted** in {payload['interrupted']!r}: only the rows below finished.", ""]


def _rate_lines(payload: dict) -> list[str]:
    rate = payload.get("curvature_rate")
    if not rate:
        return []
    if "failed" in rate:
        return [f"Curvature rate ({rate['what']}): not measured, {rate['failed']}.", ""]
    if rate["flop_s"] is None:
        return [f"Curvature rate ({rate['what']}): {_fmt_time(rate['seconds'])}; the "
                "backend gives no FLOP count.", ""]
    peak = (f", {rate['peak_fraction']:.1%} of the device's {rate['peak_flop_s'] / 1e12:.1f} "
            "TFLOP/s data-sheet peak" if rate["peak_fraction"] else
            " (no data-sheet peak known for this device)")
    return [f"Curvature rate ({rate['what']}): {rate['flops'] / 1e9:.3g} GFLOP in "
            f"{_fmt_time(rate['seconds'])}, {rate['flop_s'] / 1e9:.3g} GFLOP/s{peak}.", ""]


def _adam_sweep(payload: dict, summaries: dict) -> list[str]:
    """Lines comparing each ggn_jax row with the best Adam rate, and with
    Adam's sweep: the time of every rate's run (to the target, or all of
    it where it missed), what a user without a known rate pays."""
    adam = {label: s for label, s in summaries.items()
            if s and payload["results"][label]["kind"] == "adam"}
    reached = {label: s["time_to_target"] for label, s in adam.items() if s["time_to_target"]}
    if len(adam) < 2 or not reached:
        return []
    best = min(reached, key=reached.get)
    sweep = sum(s["time_to_target"] or s["run_s"] for s in adam.values())
    summary = (f"Best Adam: {best}, {_fmt_time(reached[best])}. Adam with its sweep of "
               f"{len(adam)} rates (each rate's run to the target, or in full where it "
               f"missed): {_fmt_time(sweep)}.")
    lines = ["", summary, "",
             "| ggn_jax row | time ÷ best Adam's | time ÷ Adam's with its sweep |",
             "| --- | ---: | ---: |"]
    for label, s in summaries.items():
        if s and payload["results"][label]["kind"].startswith("ggn"):
            time = s["time_to_target"]
            lines.append(f"| {label} | "
                         + (f"{time / reached[best]:.2f}× | {time / sweep:.3f}× |" if time
                            else "missed | missed |"))
    return lines


def plot(payload: dict, path: str) -> None:
    """Loss against wall time and against steps (and test accuracy against
    time where there is a test split), first seed, one curve per optimiser."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_accuracy = payload["run"]["target_accuracy"] > 0
    fig, axes = plt.subplots(1, 3 if with_accuracy else 2, figsize=(15 if with_accuracy else 10, 4))
    floor = 1e-32
    for label, entry in payload["results"].items():
        if "seeds" not in entry:
            continue
        trace = next(iter(entry["seeds"].values()))["trace"]
        loss = np.maximum(np.asarray(trace["loss"]), floor)
        times, accs = np.asarray(trace["time"]), np.asarray(trace["accuracy"])
        steps = np.arange(loss.size)
        # Only the evaluated steps (run.eval_stride), from the first step on:
        # wall time is on a log axis (the optimisers differ by orders of
        # magnitude).
        shown = np.isfinite(loss) & (steps > 0)
        axes[0].loglog(times[shown], loss[shown], label=label)
        axes[1].semilogy(steps[shown], loss[shown], label=label)
        if with_accuracy:
            axes[2].semilogx(times[shown], accs[shown], label=label)
    axes[0].set(xlabel="wall time (s, compile excluded; log)", ylabel="mean training loss")
    axes[1].set(xlabel="steps", ylabel="mean training loss")
    if with_accuracy:
        axes[2].set(xlabel="wall time (s, log)", ylabel="test accuracy")
        axes[2].axhline(payload["run"]["target_accuracy"], color="grey", lw=0.5)
    elif payload["run"]["target_loss"] > 0:
        for ax in axes:
            ax.axhline(payload["run"]["target_loss"], color="grey", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.suptitle(payload["problem"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(payload: dict, config: dict, out_dir: str | None = None,
                  plots: bool = True) -> dict[str, str]:
    """DIR/NAME.json and .md, and the plot (where the config asks and
    ``plots``); returns their paths."""
    folder = out_dir or config["output"]["dir"]
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, config["output"]["name"])
    paths = {"json": base + ".json", "markdown": base + ".md"}
    with open(paths["json"], "w") as f:
        json.dump(payload, f, indent=1, default=float)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(payload))
    if plots and config["output"]["plots"] and payload["results"]:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed: no plot (pip install 'ggn_jax[bench]')",
                  file=sys.stderr)
        else:
            paths["plot"] = base + ".png"
            plot(payload, paths["plot"])
    return paths


def run_and_write(config: dict, out_dir: str | None = None, quiet: bool = False):
    """`run_config` with the JSON and Markdown rewritten after every
    optimiser (so an interruption loses no finished row), then the plot;
    returns (payload, paths)."""
    payload = run_config(
        config, quiet, on_row=lambda partial: write_outputs(partial, config, out_dir, False))
    return payload, write_outputs(payload, config, out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True,
                        help="a shipped config's name (ggn-jax bench --list) or a TOML file")
    parser.add_argument("--device", default=None,
                        help="cpu, gpu or tpu (default: JAX's own choice)")
    parser.add_argument("--smoke", action="store_true", help="a tiny version, for tests")
    parser.add_argument("--out-dir", default=None, help="instead of the config's output.dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from ggn_jax.bench.suite import main as suite_main

    argv = [args.config] + (["--device", args.device] if args.device else [])
    argv += (["--smoke"] if args.smoke else []) + (["--quiet"] if args.quiet else [])
    return suite_main(argv + (["--out-dir", args.out_dir] if args.out_dir else []))


if __name__ == "__main__":
    sys.exit(main())
