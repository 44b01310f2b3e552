"""The progress bar: tqdm where installed, plain lines otherwise; reports from jit."""

import io
import sys

import jax
import jax.numpy as jnp

from ggn_jax.progress import ProgressBar, active, report_from_device


def test_without_tqdm_the_bar_prints_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    stream = io.StringIO()
    with ProgressBar(4, "fit", stream=stream) as bar:
        bar.update(2, loss=0.5, damping=1e-3)
    assert stream.getvalue() == "fit: 2/4 steps loss=0.5 damping=0.001\n"
    stream = io.StringIO()
    with ProgressBar(12, "paper demo", stream=stream, unit="run") as bar:
        bar.update(11)
    assert stream.getvalue() == "paper demo: 11/12 runs\n"


def test_each_redraw_shows_the_figures_of_its_own_update(monkeypatch):
    """tqdm redraws inside update(); the figures must be set before it, or
    every line shows the previous report's."""
    drawn = []

    class FakeTqdm:
        def __init__(self, **kwargs):
            self.postfix = None

        def set_postfix(self, figures, refresh=True):
            self.postfix = dict(figures)

        def update(self, n):
            drawn.append(self.postfix)

        def close(self):
            pass

    fake = type(sys)("tqdm.auto")
    fake.tqdm = FakeTqdm
    monkeypatch.setitem(sys.modules, "tqdm.auto", fake)
    with ProgressBar(40, "fit") as bar:
        bar.update(20, loss=0.5)
        bar.update(40, loss=0.25)
    assert drawn == [{"loss": "0.5"}, {"loss": "0.25"}]


def test_with_tqdm_the_bar_shows_position_and_figures():
    stream = io.StringIO()
    with ProgressBar(8, "fit", stream=stream) as bar:
        bar.update(6, loss=0.125)
    assert "6/8" in stream.getvalue() and "loss=0.125" in stream.getvalue()


def test_a_disabled_bar_draws_nothing():
    stream = io.StringIO()
    with ProgressBar(8, "fit", enabled=False, stream=stream) as bar:
        bar.update(6, loss=0.125)
    assert stream.getvalue() == "" and bar.position == 0


def test_a_jitted_loop_reaches_the_active_bar_every_n_steps():
    positions = []

    class Recorder(ProgressBar):
        def update(self, position, **figures):
            positions.append((position, float(figures["loss"])))

    def body(step, total):
        report_from_device(step, 4, total + step, jnp.float32(0), jnp.float32(0))
        return total + step

    loop = jax.jit(lambda: jax.lax.fori_loop(0, 10, body, jnp.float32(0)))
    with active(Recorder(10, "loop", enabled=False)):
        jax.block_until_ready(loop())
    # Steps 3 and 7 (counting from 0) report, with the running sum after them.
    assert positions == [(4, 6.0), (8, 28.0)]
    jax.block_until_ready(loop())  # no active bar: the callbacks go nowhere
    assert len(positions) == 2
