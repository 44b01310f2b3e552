"""The benchmark configs shipped with the package, found by name.

They are package data under ``ggn_jax/bench/configs/``: ``NAME.toml`` for
the optimiser benchmarks (`ggn_jax.bench.run`) and ``pinn/NAME.toml`` for
the PINN benchmarks (`ggn_jax.bench.pinn`), so an installed package runs
them from any directory. A user's own file is taken by its path.
"""

from __future__ import annotations

import os
from importlib import resources

PINN_PREFIX = "pinn/"


def _config_dir():
    return resources.files("ggn_jax.bench") / "configs"


def shipped() -> list[str]:
    """The shipped configs' names, optimiser benchmarks first, then the
    PINN ones as ``pinn/NAME``.

    >>> names = shipped()
    >>> "over_parameterised" in names and "pinn/poisson2d" in names
    True
    """
    root = _config_dir()
    bench = sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))
    pinn = sorted(PINN_PREFIX + p.name[:-5] for p in (root / "pinn").iterdir()
                  if p.name.endswith(".toml"))
    return bench + pinn


def is_pinn(name: str) -> bool:
    return name.startswith(PINN_PREFIX)


def describe(name: str, width: int = 90) -> str:
    """What a shipped config benchmarks: its leading comment up to the
    first full stop or semicolon, at most ``width`` characters."""
    words = []
    with open(resolve(name), encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#") or line.lstrip("# ").startswith("ggn-jax"):
                break
            words.append(line.lstrip("# ").strip())
    text = " ".join(words)
    for stop in (". ", "; "):
        if stop in text:
            text = text[:text.index(stop)]
    return text if len(text) <= width else text[:width - 1] + "…"


def resolve(name_or_path: str) -> str:
    """The file of a shipped config's name, or ``name_or_path`` itself where
    it is a file; a ``FileNotFoundError`` that lists the names otherwise."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = name_or_path.removesuffix(".toml")
    if name in shipped():
        # Installed packages are plain directories (wheels unpack), so the
        # resource is a real file.
        return os.fspath(_config_dir() / f"{name}.toml")
    raise FileNotFoundError(
        f"no benchmark config {name_or_path!r}: not a file, and not one of the shipped "
        f"configs ({', '.join(shipped())}); `ggn-jax bench --list` describes them")
