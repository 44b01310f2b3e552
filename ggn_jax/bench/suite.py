"""``ggn-jax bench``: one or all shipped benchmark configs on this machine.

    ggn-jax bench --list                   the shipped configs, one line each
    ggn-jax bench NAME [NAME ...]          those configs (or TOML files by path)
    ggn-jax bench --all --device gpu       every config, on the GPU
    ggn-jax bench --all --max-seconds 10   every config, each run cut at 10 s
    ggn-jax bench NAME --select 'defaults|Adam'
                                           only the optimisers whose label matches

Every config is validated before the first one runs. Each writes its JSON,
Markdown and plot under ``--out-dir`` as it goes (`ggn_jax.bench.run`);
at the end, and after every config, ``summary.md`` and ``summary.json``
hold one line per config (`ggn_jax.bench.summary`), and the summary table
is printed. Ctrl-C stops the run and keeps every finished row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time

from ggn_jax.bench import catalog

DEFAULT_OUT = os.path.join("results", "bench")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ggn-jax bench",
        description="Runs shipped benchmark configs (or your own TOML files) on this machine.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="a shipped config (see --list) or the path of a TOML file")
    parser.add_argument("--all", action="store_true", help="every shipped config")
    parser.add_argument("--list", action="store_true", help="name and describe the shipped configs")
    parser.add_argument("--device", default=None, choices=("cpu", "gpu", "tpu"),
                        help="the JAX platform to run on (default: JAX's own choice)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny version of each config (seconds; for CI)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="cap every run's wall time at this (a quick look at --all)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per seed, instead of each config's own")
    parser.add_argument("--select", default=None, metavar="REGEX",
                        help="only the optimisers whose label matches this regular "
                             "expression (re.search); each config must keep at least one")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out-dir", default=DEFAULT_OUT,
                        help=f"where results go (default: {DEFAULT_OUT})")
    return parser


def _load(name: str, smoke: bool, max_seconds: float | None = None,
          repeats: int | None = None, select: str | None = None):
    """(kind, config) of a name or path, with the run limits and the
    optimiser selection of the command line applied; raises
    FileNotFoundError or ConfigError with the file, the field and the
    allowed values."""
    from ggn_jax.bench.config import load_bench_config
    from ggn_jax.bench.config import smoke as smoke_config
    from ggn_jax.bench.pinn import load_pinn_config
    from ggn_jax.bench.run import check_batch_size

    path = catalog.resolve(name)
    if catalog.is_pinn(name) or _looks_pinn(path):
        config = _selected(load_pinn_config(path), name, select)
        for spec in config["optimizers"]:
            spec["max_seconds"] = min(spec["max_seconds"], max_seconds or float("inf"))
        return "pinn", config
    config = _selected(load_bench_config(path), name, select)
    if name in catalog.shipped():
        config["output"]["name"] = name
    config = smoke_config(config) if smoke else config
    check_batch_size(config, path + (" (at --smoke sizes)" if smoke else ""))
    run = config["run"]
    run["max_seconds"] = min(run["max_seconds"], max_seconds or float("inf"))
    run["repeats"] = repeats or run["repeats"]
    return "bench", config


def _selected(config: dict, name: str, select: str | None) -> dict:
    """``config`` with only the optimisers whose label ``select`` matches."""
    if select is None:
        return config
    from ggn_jax.config import ConfigError

    labels = [spec["label"] for spec in config["optimizers"]]
    kept = [spec for spec in config["optimizers"] if re.search(select, spec["label"])]
    if not kept:
        raise ConfigError(f"{name}: --select {select!r} matches no optimiser; its labels: "
                          + ", ".join(repr(label) for label in labels))
    return {**config, "optimizers": kept}


def _looks_pinn(path: str) -> bool:
    """A user's PINN file: its [problem] table names a PDE problem."""
    from ggn_jax.config import read_toml

    problem = read_toml(path).get("problem", {})
    return isinstance(problem, dict) and set(problem) == {"name"}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        width = max(len(n) for n in catalog.shipped())
        for name in catalog.shipped():
            print(f"{name:<{width}}  {catalog.describe(name)}")
        return 0
    names = catalog.shipped() if args.all else args.names
    if not names:
        parser.error("name a config (ggn-jax bench --list), or give --all")
    from ggn_jax.config import ConfigError

    try:  # every config is checked before anything runs
        if (args.max_seconds is not None and args.max_seconds <= 0) or \
                (args.repeats is not None and args.repeats < 1):
            raise ConfigError("--max-seconds must be > 0 and --repeats ≥ 1")
        if args.select is not None:
            try:
                re.compile(args.select)
            except re.error as error:
                raise ConfigError(f"--select {args.select!r} is not a regular expression: "
                                  f"{error}") from None
        configs = [(name, *_load(name, args.smoke, args.max_seconds, args.repeats,
                                 args.select)) for name in names]
    except (FileNotFoundError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import jax

    if args.device:
        try:
            device = jax.devices(args.device)[0]
        except RuntimeError as error:
            print(f"error: --device {args.device}: JAX has no such device here ({error})",
                  file=sys.stderr)
            return 2
        placement = jax.default_device(device)
    else:
        placement = contextlib.nullcontext()
    with placement:
        return _run_all(configs, args)


def _run_all(configs: list, args) -> int:
    from ggn_jax.bench import pinn, run, summary
    from ggn_jax.bench.common import device_info, machine

    device = machine()
    print(f"ggn-jax bench: {len(configs)} config(s) on {device}"
          + (" (smoke sizes)" if args.smoke else ""), file=sys.stderr, flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    rows, interrupted, begin = [], False, time.perf_counter()
    for index, (name, kind, config) in enumerate(configs, 1):
        print(f"[{index}/{len(configs)}] {name} ({time.perf_counter() - begin:.0f} s so far)",
              file=sys.stderr, flush=True)
        try:
            if kind == "bench":
                payload, paths = run.run_and_write(config, args.out_dir, args.quiet)
                print(run.markdown(payload))
                rows.append(summary.bench_row(payload))
                interrupted = bool(payload["interrupted"])
            else:
                results = pinn.run(config, smoke=args.smoke)
                paths = pinn.write(results, args.out_dir, with_plot=True)
                print(pinn.markdown(results))
                rows.append(summary.pinn_row(results, name))
        except KeyboardInterrupt:  # inside a PINN run: that config is lost
            interrupted = True
            paths = {}
            print(f"\ninterrupted in {name}", file=sys.stderr)
        if paths:
            print("wrote " + ", ".join(paths.values()), file=sys.stderr)
        _write_summary(rows, device_info(), device, args.out_dir)
        if interrupted:
            break
    print(summary.markdown(rows, device))
    print(f"wrote {os.path.join(args.out_dir, 'summary.md')} and summary.json; "
          f"{time.perf_counter() - begin:.0f} s in all", file=sys.stderr)
    return 130 if interrupted else 0


def _write_summary(rows: list[dict], info: dict, device: str, out_dir: str) -> None:
    from ggn_jax.bench.summary import markdown

    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"device": info, "machine": device, "rows": rows}, f, indent=1, default=float)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(markdown(rows, device))
