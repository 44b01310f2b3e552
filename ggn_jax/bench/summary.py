"""One line per benchmark config: the fastest peer, ggn_jax, and the ratio.

For an optimiser benchmark (`ggn_jax.bench.run`) the time is each
optimiser's time to the config's target, the median over its seeds
(`ggn_jax.bench.run.summarise`), compile time excluded; ggn_jax is its
fastest row. For a PINN benchmark (`ggn_jax.bench.pinn`) it is the time to
relative L2 error ≤ 1e-5, the median over seeds (a seed that misses counts
as infinite), with Adam at its best rate.

The speed-up is the fastest peer's time ÷ ggn_jax's: above 1, ggn_jax got
there first. Where no peer reached the target it is a lower bound, shown
as "≥": each peer would have needed more time than it ran, so the fastest
of them more than the shortest peer run, and that run ÷ ggn_jax's time
bounds the speed-up from below. Where a peer reached it, the ratio is to
the fastest that did, unless another stopped short of the target (at its
step cap) sooner than that: it might have got there first, and the ratio
is then an upper bound, shown as "≤". Where ggn_jax missed it, there is
none.
"""

from __future__ import annotations

import math
import statistics

from ggn_jax.bench.run import _fmt_time, _targets, summarise

PINN_THRESHOLD = 1e-5


def _is_ours(kind: str) -> bool:
    return kind.startswith("ggn")


def bench_row(payload: dict) -> dict:
    """The summary of one `ggn_jax.bench.run` payload."""
    times, run_s, kinds = {}, {}, {}
    for label, entry in payload["results"].items():
        s = summarise(entry)
        kinds[label] = entry["kind"]
        if s is not None:
            run_s[label] = s["run_s"]
            if s["time_to_target"] is not None:
                times[label] = s["time_to_target"]
    row = _row(payload["name"], _targets(payload["run"]), times, run_s, kinds)
    row["interrupted"] = payload.get("interrupted")
    return row


def pinn_row(results: dict, name: str) -> dict:
    """The summary of one `ggn_jax.bench.pinn` result."""
    from ggn_jax.bench.pinn import first_reaching

    times, run_s, kinds = {}, {}, {}
    for label in results["summary"]:  # Adam: its best rate only
        runs = results["runs"][label]
        kinds[label] = runs["kind"]
        to = [first_reaching(r["rows"], PINN_THRESHOLD)[0] for r in runs["runs"]]
        median = statistics.median(to)
        run_s[label] = statistics.median(r["rows"][-1][1] for r in runs["runs"])
        if math.isfinite(median):
            times[label] = median
    return _row(name, f"relative L2 ≤ {PINN_THRESHOLD:g}", times, run_s, kinds)


def _row(name: str, target: str, times: dict, run_s: dict, kinds: dict) -> dict:
    ours = {label: t for label, t in times.items() if _is_ours(kinds[label])}
    peers = {label: t for label, t in times.items() if not _is_ours(kinds[label])}
    ran_peers = {label: t for label, t in run_s.items() if not _is_ours(kinds[label])}
    row = {"config": name, "target": target, "ggn_row": None, "ggn_time": None,
           "peer_row": None, "peer_time": None, "speedup": None, "lower_bound": False,
           "upper_bound": False}
    if ours:
        row["ggn_row"] = min(ours, key=ours.get)
        row["ggn_time"] = ours[row["ggn_row"]]
    if peers:
        row["peer_row"] = min(peers, key=peers.get)
        row["peer_time"] = peers[row["peer_row"]]
        if row["ggn_time"]:
            row["speedup"] = row["peer_time"] / row["ggn_time"]
            # A peer that stopped short of the target sooner than the
            # fastest one reached it might have got there sooner still.
            missed = [t for label, t in ran_peers.items() if label not in peers]
            row["upper_bound"] = bool(missed) and min(missed) < row["peer_time"]
    elif ran_peers and row["ggn_time"]:
        # No peer reached the target: each would have needed longer than it
        # ran, so the fastest peer's time exceeds the shortest run, and that
        # run (not the longest) bounds the speed-up from below.
        row["speedup"] = min(ran_peers.values()) / row["ggn_time"]
        row["lower_bound"] = True
    return row


def markdown(rows: list[dict], device: str) -> str:
    """The summary table, with the device it ran on."""
    lines = [f"Summary on {device}: time to each config's target (median over seeds, "
             "compile excluded); speed-up = fastest peer's time ÷ ggn_jax's.", "",
             "| config | target | fastest peer | its time | ggn_jax (fastest row) | its time "
             "| speed-up |", "| --- | --- | --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        if r["speedup"] is None:
            speedup = "—" if r["ggn_time"] is None else "no peer ran"
        else:
            bound = "≥ " if r["lower_bound"] else "≤ " if r.get("upper_bound") else ""
            speedup = bound + f"{r['speedup']:.2f}×"
        peer = r["peer_row"] or ("no peer reached it" if r["ggn_time"] else "—")
        ours = r["ggn_row"] or "missed"
        note = " (interrupted)" if r.get("interrupted") else ""
        lines.append(f"| {r['config']}{note} | {r['target']} | {peer} | "
                     f"{_fmt_time(r['peer_time'])} | {ours} | {_fmt_time(r['ggn_time'])} "
                     f"| {speedup} |")
    return "\n".join(lines) + "\n"
