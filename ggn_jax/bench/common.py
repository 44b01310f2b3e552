"""Where the numbers came from: the machine, the device and its peak rate.

`device_info` is what every benchmark result carries; `peak_flops` is the
vendor's dense peak for the device kinds we know (None for the rest, CPUs
included), so that a run can say what fraction of the card its curvature
work reached.
"""

from __future__ import annotations

import os
import platform

import jax

# Dense peak FLOP/s by device kind and dtype, from the vendors' data sheets
# (SXM boards; no structured sparsity). float32 is the plain FP32 rate: XLA
# may use TF32 tensor cores for float32 matmuls, which can exceed it.
_PEAKS = {
    "H100": {"float32": 67e12, "float64": 34e12},
    "H200": {"float32": 67e12, "float64": 34e12},
    "A100": {"float32": 19.5e12, "float64": 9.7e12},
    "L4": {"float32": 30.3e12, "float64": 0.49e12},
    "V100": {"float32": 15.7e12, "float64": 7.8e12},
}


def lower_median(items: list, key) -> object:
    """The item of median ``key``: the middle one of an odd count, the
    lower of the two middle ones of an even count (with 2 items, the one of
    smaller key). A timed run is a whole record (its per-step losses and
    times), which cannot be averaged with another; the lower of the two
    middle ones is also the one a noisy shared machine disturbed less.

    >>> lower_median([3.0, 1.0, 2.0], key=float), lower_median([4.0, 1.0], key=float)
    (2.0, 1.0)
    """
    if not items:
        raise ValueError("no timed runs to take a median of")
    return sorted(items, key=key)[(len(items) - 1) // 2]


def median_words(repeats: int) -> str:
    """How a table names the time it reports of ``repeats`` timed runs."""
    if repeats == 1:
        return "one timed run"
    if repeats % 2:
        return f"median of {repeats} timed runs"
    if repeats == 2:
        return "the faster of 2 timed runs"
    return f"lower median of {repeats} timed runs"


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The data-sheet peak of a device kind (JAX's ``device_kind``) for
    ``dtype``, or None where it is not known.

    >>> peak_flops("NVIDIA H100 80GB HBM3", "float64")
    34000000000000.0
    >>> peak_flops("cpu", "float32") is None
    True
    """
    for name, peaks in _PEAKS.items():
        if name in device_kind.upper().split() or f" {name}" in f" {device_kind.upper()}":
            return peaks.get(dtype)
    return None


def device_info(device=None) -> dict:
    """Name, kind, memory and backend of ``device`` (default: the one JAX
    places arrays on, ``jax.default_device`` where set), with the JAX and
    Python versions and the host."""
    device = device or jax.config.jax_default_device or jax.devices()[0]
    if isinstance(device, str):  # the config may hold a platform name
        device = jax.devices(device)[0]
    stats = device.memory_stats() or {}
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "memory_bytes": stats.get("bytes_limit"),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "host": f"{platform.machine()} {os.cpu_count()} cores",
    }


def machine() -> str:
    """A one-line description of where the numbers came from."""
    info = device_info()
    memory = (f", {info['memory_bytes'] / 2**30:.0f} GiB" if info["memory_bytes"] else "")
    return (f"{info['host']}, {info['platform']} ({info['device_kind']}{memory}), "
            f"jax {info['jax']}, python {info['python']}")
