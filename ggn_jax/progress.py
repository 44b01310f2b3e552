"""Progress of long runs: a bar on the host, fed from inside ``jit``.

`ProgressBar` draws with tqdm where it is installed and otherwise prints a
plain line to stderr at each update. A jitted loop cannot hold a Python
object, so `report_from_device` sends (step, loss, λ, ρ) through
``jax.debug.callback`` to whichever bar is `active` when the program runs;
the compiled program is cached and reused, the bar is not. Only every
``every``-th step calls back, so the cost on the device is one predicate per
step and one host call per report.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import jax
import numpy as np


class ProgressBar:
    """A progress bar over ``total`` steps, with named figures beside it.

    Args:
      total: the number of steps the bar spans.
      desc: the label in front of it.
      enabled: False draws nothing (every method is then a no-op).
      stream: where to draw (stderr by default).
      unit: what the steps count, shown beside the count ("step", "run", …).

    Example:
      >>> import io
      >>> from ggn_jax.progress import ProgressBar
      >>> with ProgressBar(10, "fit", stream=io.StringIO()) as bar:
      ...     bar.update(5, loss=0.25)
      ...     bar.position
      5
    """

    def __init__(
        self, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None,
        unit: str = "step",
    ):
        self.total, self.desc, self.enabled, self.unit = total, desc, enabled, unit
        self.stream = sys.stderr if stream is None else stream
        self.position = 0
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # plain lines instead
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream,
                                 dynamic_ncols=True)

    def update(self, position: int, **figures: float) -> None:
        """Moves the bar to ``position`` and shows ``figures`` (e.g. loss=…)."""
        if not self.enabled:
            return
        text = {name: f"{float(value):.3g}" for name, value in figures.items()}
        if self._bar is not None:
            # The figures first: update() redraws, and must show these.
            self._bar.set_postfix(text, refresh=False)
            self._bar.update(position - self.position)
        else:
            shown = " ".join(f"{name}={value}" for name, value in text.items())
            print(f"{self.desc}: {position}/{self.total} {self.unit}s {shown}".rstrip(),
                  file=self.stream)
        self.position = position

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_ACTIVE: list[ProgressBar] = []


@contextlib.contextmanager
def active(bar: ProgressBar) -> Iterator[ProgressBar]:
    """Makes ``bar`` the one `report_from_device` reaches, while inside."""
    _ACTIVE.append(bar)
    try:
        yield bar
    finally:
        jax.effects_barrier()  # every callback of the run has landed
        _ACTIVE.remove(bar)


def _to_active_bar(step: np.ndarray, loss: np.ndarray, damping: np.ndarray,
                   rho: np.ndarray) -> None:
    if _ACTIVE:
        _ACTIVE[-1].update(int(step) + 1, loss=loss, damping=damping, rho=rho)


def report_from_device(
    step: jax.Array, every: int, loss: jax.Array, damping: jax.Array, rho: jax.Array
) -> None:
    """Inside ``jit``: at steps every−1, 2·every−1, … send the figures to the
    active bar (step counts from 0)."""
    jax.lax.cond(
        (step + 1) % every == 0,
        lambda: jax.debug.callback(_to_active_bar, step, loss, damping, rho),
        lambda: None,
    )
