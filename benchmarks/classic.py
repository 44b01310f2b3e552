"""Classic nonlinear least-squares test problems as JAX residual functions.

Every problem is a residual map r: R^n -> R^m written in ``jax.numpy`` (safe
under ``jit``/``grad``/``jacfwd`` and in float64), a standard start x0 and,
where known, the cost ½‖r‖² at the best known minimum.

Two families:

* Moré, Garbow & Hillstrom, "Testing unconstrained optimization software",
  ACM Trans. Math. Softw. 7(1):17–41, 1981 (MGH). All nineteen fixed-size
  problems (#1–#19) at their standard (m, n) and start, plus some of the
  variable-size problems (#20–#35) at a standard size. MGH quote
  f = Σ r_i² = ‖r‖² to six (truncated) digits, kept in ``published_f``;
  ``reference_cost`` is ½‖r‖² at the global minimum to full precision, from
  our own scipy solves, and agrees with ``published_f``/2 to the printed
  digits (exception: Biggs EXP6, where MGH print a local minimum).
  Where MGH give a choice of m: Jennrich–Sampson m = 10, Gulf research and
  development m = 99 (zero residual, so f* = 0 for any m), Box 3-D m = 10,
  Brown–Dennis m = 20, Biggs EXP6 m = 13.
* Badly scaled regression models with synthetic data, in the style of the
  NIST StRD "higher difficulty" problems (https://www.itl.nist.gov/div898/
  strd/nls/nls_main.shtml): parameters spanning several orders of magnitude
  and x in the hundreds or thousands. Data come from true parameters plus
  small Gaussian noise drawn from ``numpy.random.RandomState`` (a frozen,
  version-stable stream) with a fixed seed, so the residual at the optimum is
  non-zero; ``reference_cost`` is the best cost found by scipy's
  ``least_squares`` (LM and TRF, starts ×1/×10/×100, exact JAX Jacobian).

Usage::

    from benchmarks.classic import PROBLEMS, starts, scipy_reference
    p = PROBLEMS["meyer"]
    for factor, x0 in starts(p):
        print(factor, scipy_reference(p, x0)["cost"])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LeastSquares(NamedTuple):
    """One least-squares problem min ½‖r(x)‖².

    Attributes:
      name: key in ``PROBLEMS``.
      residual: x (n,) -> r (m,), pure ``jax.numpy``.
      start: the standard starting point x0.
      reference_cost: ½‖r‖² at the best known minimum (None if unknown).
      source: ``"MGH 1981 #k"`` or ``"badly scaled, synthetic"``.
      m: number of residuals.
      note: known pitfalls (local minima, minima at infinity, ...).
      published_f: for MGH problems, f* = ‖r‖² as printed in the paper (six
        digits, truncated); None otherwise.
    """

    name: str
    residual: Callable[[jax.Array], jax.Array]
    start: tuple[float, ...]
    reference_cost: float | None
    source: str
    m: int
    note: str = ""
    published_f: float | None = None

    @property
    def n(self) -> int:
        """Number of parameters."""
        return len(self.start)


# ---------------------------------------------------------------------------
# Moré–Garbow–Hillstrom problems 1–19 (fixed sizes)
# ---------------------------------------------------------------------------


def _rosenbrock(x):
    return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def _freudenstein_roth(x):
    return jnp.stack([
        -13.0 + x[0] + ((5.0 - x[1]) * x[1] - 2.0) * x[1],
        -29.0 + x[0] + ((x[1] + 1.0) * x[1] - 14.0) * x[1],
    ])


def _powell_badly_scaled(x):
    return jnp.stack([
        1e4 * x[0] * x[1] - 1.0,
        jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001,
    ])


def _brown_badly_scaled(x):
    return jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


_BEALE_Y = np.array([1.5, 2.25, 2.625])
_BEALE_I = np.arange(1.0, 4.0)


def _beale(x):
    return _BEALE_Y - x[0] * (1.0 - x[1] ** _BEALE_I)


_JS_I = np.arange(1.0, 11.0)  # m = 10


def _jennrich_sampson(x):
    return 2.0 + 2.0 * _JS_I - (jnp.exp(_JS_I * x[0]) + jnp.exp(_JS_I * x[1]))


def _helical_valley(x):
    # θ = arctan(x2/x1)/(2π), plus ½ when x1 < 0. Written with arctan2 on
    # (s·x2, s·x1), s = sign(x1), which equals arctan(x2/x1) without the
    # division (finite at x1 = 0, where it takes the x1 → 0+ limit).
    neg = x[0] < 0
    s = jnp.where(neg, -1.0, 1.0)
    theta = jnp.arctan2(s * x[1], s * x[0]) / (2.0 * np.pi) + jnp.where(neg, 0.5, 0.0)
    return jnp.stack([
        10.0 * (x[2] - 10.0 * theta),
        10.0 * (jnp.sqrt(x[0] ** 2 + x[1] ** 2) - 1.0),
        x[2],
    ])


_BARD_Y = np.array([0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39,
                    0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39])
_BARD_U = np.arange(1.0, 16.0)
_BARD_V = 16.0 - _BARD_U
_BARD_W = np.minimum(_BARD_U, _BARD_V)


def _bard(x):
    return _BARD_Y - (x[0] + _BARD_U / (_BARD_V * x[1] + _BARD_W * x[2]))


_GAUSS_Y = np.array([0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
                     0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009])
_GAUSS_T = (8.0 - np.arange(1.0, 16.0)) / 2.0


def _gaussian(x):
    return x[0] * jnp.exp(-x[1] * (_GAUSS_T - x[2]) ** 2 / 2.0) - _GAUSS_Y


_MEYER_Y = np.array([34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0,
                     9744.0, 8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0,
                     2872.0])
_MEYER_T = 45.0 + 5.0 * np.arange(1.0, 17.0)


def _meyer(x):
    return x[0] * jnp.exp(x[1] / (_MEYER_T + x[2])) - _MEYER_Y


_GULF_T = np.arange(1.0, 100.0) / 100.0  # m = 99
_GULF_Y = 25.0 + (-50.0 * np.log(_GULF_T)) ** (2.0 / 3.0)


def _gulf(x):
    # MGH print |y_i m_i x2|; the intended (and MINPACK) form is |y_i − x2|.
    return jnp.exp(-jnp.abs(_GULF_Y - x[1]) ** x[2] / x[0]) - _GULF_T


_BOX_T = 0.1 * np.arange(1.0, 11.0)  # m = 10
_BOX_C = np.exp(-_BOX_T) - np.exp(-10.0 * _BOX_T)


def _box3d(x):
    return jnp.exp(-_BOX_T * x[0]) - jnp.exp(-_BOX_T * x[1]) - x[2] * _BOX_C


def _powell_singular(x):
    return jnp.stack([
        x[0] + 10.0 * x[1],
        np.sqrt(5.0) * (x[2] - x[3]),
        (x[1] - 2.0 * x[2]) ** 2,
        np.sqrt(10.0) * (x[0] - x[3]) ** 2,
    ])


def _wood(x):
    return jnp.stack([
        10.0 * (x[1] - x[0] ** 2),
        1.0 - x[0],
        np.sqrt(90.0) * (x[3] - x[2] ** 2),
        1.0 - x[2],
        np.sqrt(10.0) * (x[1] + x[3] - 2.0),
        (x[1] - x[3]) / np.sqrt(10.0),
    ])


_KO_Y = np.array([0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627,
                  0.0456, 0.0342, 0.0323, 0.0235, 0.0246])
_KO_U = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])


def _kowalik_osborne(x):
    u = _KO_U
    return _KO_Y - x[0] * (u ** 2 + u * x[1]) / (u ** 2 + u * x[2] + x[3])


_BD_T = np.arange(1.0, 21.0) / 5.0  # m = 20


def _brown_dennis(x):
    a = x[0] + _BD_T * x[1] - np.exp(_BD_T)
    b = x[2] + x[3] * np.sin(_BD_T) - np.cos(_BD_T)
    return a ** 2 + b ** 2


_OS1_Y = np.array([
    0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
    0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
    0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406])
_OS1_T = 10.0 * np.arange(33.0)


def _osborne1(x):
    t = _OS1_T
    return _OS1_Y - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


_BIGGS_T = 0.1 * np.arange(1.0, 14.0)  # m = 13
_BIGGS_Y = (np.exp(-_BIGGS_T) - 5.0 * np.exp(-10.0 * _BIGGS_T)
            + 3.0 * np.exp(-4.0 * _BIGGS_T))


def _biggs_exp6(x):
    t = _BIGGS_T
    return (x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1])
            + x[5] * jnp.exp(-t * x[4]) - _BIGGS_Y)


_OS2_Y = np.array([
    1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746,
    0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649,
    0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395,
    0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653,
    0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739,
    0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054])
_OS2_T = np.arange(65.0) / 10.0


def _osborne2(x):
    t = _OS2_T
    model = (x[0] * jnp.exp(-t * x[4])
             + x[1] * jnp.exp(-((t - x[8]) ** 2) * x[5])
             + x[2] * jnp.exp(-((t - x[9]) ** 2) * x[6])
             + x[3] * jnp.exp(-((t - x[10]) ** 2) * x[7]))
    return _OS2_Y - model


# ---------------------------------------------------------------------------
# Moré–Garbow–Hillstrom variable-size problems at a standard size
# ---------------------------------------------------------------------------


def _watson(n):
    t = np.arange(1.0, 30.0) / 29.0
    j = np.arange(n)
    powers = t[:, None] ** j[None, :]  # t_i^(j-1), j = 1..n
    dpowers = np.zeros_like(powers)  # (j-1) t_i^(j-2)
    dpowers[:, 1:] = j[1:] * powers[:, :-1]

    def residual(x):
        r = dpowers @ x - (powers @ x) ** 2 - 1.0
        return jnp.concatenate([r, jnp.stack([x[0], x[1] - x[0] ** 2 - 1.0])])

    return residual


def _extended_rosenbrock(x):
    odd, even = x[0::2], x[1::2]
    return jnp.stack([10.0 * (even - odd ** 2), 1.0 - odd], axis=1).reshape(-1)


def _penalty1(x):
    a = np.sqrt(1e-5)
    return jnp.concatenate([a * (x - 1.0), jnp.sum(x ** 2)[None] - 0.25])


def _penalty2(n):
    a = np.sqrt(1e-5)
    i = np.arange(2.0, n + 1.0)
    y = np.exp(i / 10.0) + np.exp((i - 1.0) / 10.0)
    w = n - np.arange(n) * 1.0  # n - j + 1, j = 1..n

    def residual(x):
        e = jnp.exp(x / 10.0)
        return jnp.concatenate([
            x[:1] - 0.2,
            a * (e[1:] + e[:-1] - y),
            a * (e[1:] - np.exp(-0.1)),
            (jnp.sum(w * x ** 2) - 1.0)[None],
        ])

    return residual


def _variably_dimensioned(x):
    j = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    s = jnp.sum(j * (x - 1.0))
    return jnp.concatenate([x - 1.0, jnp.stack([s, s ** 2])])


def _trigonometric(x):
    n = x.shape[0]
    i = jnp.arange(1, n + 1, dtype=x.dtype)
    c = jnp.cos(x)
    return n - jnp.sum(c) + i * (1.0 - c) - jnp.sin(x)


def _brown_almost_linear(x):
    n = x.shape[0]
    return jnp.concatenate([x[:-1] + jnp.sum(x) - (n + 1.0), (jnp.prod(x) - 1.0)[None]])


def _linear_full_rank(m):
    def residual(x):
        n = x.shape[0]
        s = 2.0 / m * jnp.sum(x)
        tail = jnp.full((m - n,), -s - 1.0, dtype=x.dtype)
        return jnp.concatenate([x - s - 1.0, tail])

    return residual


def _chebyquad(m):
    i = np.arange(1.0, m + 1.0)
    target = np.zeros(m)
    target[1::2] = -1.0 / (i[1::2] ** 2 - 1.0)  # ∫₀¹ T_i, zero for odd i

    def residual(x):
        y = 2.0 * x - 1.0  # shifted Chebyshev polynomials on [0, 1]
        t_prev, t = jnp.ones_like(y), y
        rows = [t]
        for _ in range(m - 1):
            t_prev, t = t, 2.0 * y * t - t_prev
            rows.append(t)
        return jnp.mean(jnp.stack(rows), axis=1) - target

    return residual


# ---------------------------------------------------------------------------
# Badly scaled regression models with synthetic data (NIST StRD style)
# ---------------------------------------------------------------------------


def _synthetic(model, b_true, x, noise, seed):
    """Data y = model(b_true, x) + noise·std(y)·ε, ε ~ N(0, 1) drawn from
    RandomState(seed); returns the residual b -> model(b, x) - y."""
    x = np.asarray(x, dtype=np.float64)
    b_true = np.asarray(b_true, dtype=np.float64)
    y_clean = np.asarray(model(b_true, x, np), dtype=np.float64)
    eps = np.random.RandomState(seed).standard_normal(x.shape)
    y = y_clean + noise * np.std(y_clean) * eps

    def residual(b):
        return model(b, x, jnp) - y

    return residual


def _exp_saturation(b, x, xp):
    # Misra-like: y = b1 (1 − exp(−b2 x)), b1 ~ 1e2, b2 ~ 5e-4, x in the hundreds.
    return b[0] * (1.0 - xp.exp(-b[1] * x))


def _rational_quadratic(b, x, xp):
    # Hahn/Thurber-like rational with x in the thousands: coefficients 1e2 … 1e-6.
    return (b[0] + b[1] * x + b[2] * x ** 2) / (1.0 + b[3] * x + b[4] * x ** 2)


def _rational_cubic(b, x, xp):
    # Thurber-like cubic/cubic in x ∈ [-3, 2] (log-density axis), y in the thousands.
    num = b[0] + b[1] * x + b[2] * x ** 2 + b[3] * x ** 3
    den = 1.0 + b[4] * x + b[5] * x ** 2 + b[6] * x ** 3
    return num / den


def _arctan_step(b, x, xp):
    # Roszman-like: linear trend b2 ~ 1e-4 plus an arctan step at x = b4 ~ 2e3
    # of width 1/b3 ~ 200.
    return b[0] + b[1] * x + xp.arctan(b[2] * (x - b[3])) / np.pi


def _two_gaussians(b, x, xp):
    # Gauss-like: decaying baseline plus two overlapping peaks near x ~ 100,
    # widths ~ 10.
    return (b[0] * xp.exp(-b[1] * x)
            + b[2] * xp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
            + b[5] * xp.exp(-((x - b[6]) ** 2) / b[7] ** 2))


def _narrow_gaussian(b, x, xp):
    # Eckerle-like: (b1/b2) exp(−½((x − b3)/b2)²), a narrow peak at x ~ 450.
    return (b[0] / b[1]) * xp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2)


def _power_law(b, x, xp):
    # Bennett-like: b1 (b2 + x)^(−1/b3), b1 ~ −1e3, strongly correlated parameters.
    return b[0] * (b[1] + x) ** (-1.0 / b[2])


def _logistic(b, x, xp):
    # Rat43-like asymmetric logistic b1 / (1 + exp(b2 − b3 x))^(1/b4), b3 ~ 1e-2,
    # x up to 1500. Written as b1 exp(−log(1 + exp(b2 − b3 x))/b4) so it stays
    # finite far from the data.
    return b[0] * xp.exp(-xp.logaddexp(0.0, b[1] - b[2] * x) / b[3])


def _exp_decay_pair(b, x, xp):
    # Lanczos/Osborne-like pair of exponentials with rates 1e-3 and 1e-1, x to 2000.
    return b[0] * xp.exp(-b[1] * x) + b[2] * xp.exp(-b[3] * x) + b[4]


_grid = np.linspace

# (name, model, true parameters, x grid, noise relative to std(y), seed, start)
_SYNTHETIC_SPECS = [
    ("exp_saturation", _exp_saturation, (240.0, 5.5e-4),
     _grid(75.0, 800.0, 14), 0.002, 101, (500.0, 1e-4)),
    ("rational_quadratic", _rational_quadratic, (100.0, 0.5, 4e-4, 1e-3, 1e-6),
     _grid(100.0, 3000.0, 40), 0.002, 102, (80.0, 0.4, 5e-4, 1.5e-3, 2e-6)),
    ("rational_cubic", _rational_cubic,
     (1290.0, 1490.0, 580.0, 75.0, 0.96, 0.40, 0.050),
     _grid(-3.0, 2.2, 37), 0.002, 103, (1000.0, 1000.0, 400.0, 40.0, 0.7, 0.3, 0.03)),
    ("arctan_step", _arctan_step, (1.5, 2e-4, 5e-3, 2000.0),
     _grid(0.0, 4000.0, 25), 0.01, 104, (1.0, 1e-4, 1e-2, 1500.0)),
    ("two_gaussians", _two_gaussians,
     (100.0, 5e-3, 90.0, 113.0, 20.0, 70.0, 140.0, 12.0),
     _grid(1.0, 250.0, 250), 0.02, 105,
     (95.0, 8e-3, 80.0, 105.0, 25.0, 60.0, 150.0, 15.0)),
    ("narrow_gaussian", _narrow_gaussian, (2.5, 5.0, 455.0),
     _grid(400.0, 500.0, 35), 0.01, 106, (1.0, 10.0, 470.0)),
    ("power_law", _power_law, (-3000.0, 50.0, 0.9),
     _grid(5.0, 15.0, 154), 0.002, 107, (-2000.0, 50.0, 0.8)),
    ("logistic", _logistic, (700.0, 5.0, 7.5e-3, 1.3),
     _grid(100.0, 1500.0, 15), 0.01, 108, (100.0, 10.0, 1e-2, 1.0)),
    ("exp_decay_pair", _exp_decay_pair, (2.0, 1.5e-3, 5.0, 0.12, 0.3),
     _grid(0.0, 2000.0, 50), 0.002, 109, (1.0, 5e-3, 2.0, 0.5, 0.0)),
]


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def _mgh(name, k, residual, start, m, f_pub, ref=None, note=""):
    """An MGH problem; ``ref`` (½‖r‖², full precision, from our own solves and
    agreeing with ``f_pub``/2 to the printed digits) defaults to ``f_pub``/2."""
    ref = 0.5 * f_pub if ref is None else ref
    return LeastSquares(name, residual, tuple(float(v) for v in start), ref,
                        f"MGH 1981 #{k}", m, note, f_pub)


def _build() -> dict[str, LeastSquares]:
    probs = [
        _mgh("rosenbrock", 1, _rosenbrock, (-1.2, 1.0), 2, 0.0),
        _mgh("freudenstein_roth", 2, _freudenstein_roth, (0.5, -2.0), 2, 0.0,
             note="f = 0 at (5, 4); the local minimum f = 48.9842 at (11.41, -0.8968) "
                  "attracts LM/TRF from x0, 10·x0 and 100·x0"),
        _mgh("powell_badly_scaled", 3, _powell_badly_scaled, (0.0, 1.0), 2, 0.0,
             note="minimum at (1.098e-5, 9.106)"),
        _mgh("brown_badly_scaled", 4, _brown_badly_scaled, (1.0, 1.0), 3, 0.0,
             note="minimum at (1e6, 2e-6)"),
        _mgh("beale", 5, _beale, (1.0, 1.0), 3, 0.0, note="minimum at (3, 0.5)"),
        _mgh("jennrich_sampson", 6, _jennrich_sampson, (0.3, 0.4), 10, 124.362,
             ref=62.181091177807424, note="m = 10; minimum at x1 = x2 = 0.2578"),
        _mgh("helical_valley", 7, _helical_valley, (-1.0, 0.0, 0.0), 3, 0.0,
             note="minimum at (1, 0, 0)"),
        _mgh("bard", 8, _bard, (1.0, 1.0, 1.0), 15, 8.21487e-3,
             ref=0.004107438653289483,
             note="second minimum f = 17.4286 at (0.8406, -inf, -inf)"),
        _mgh("gaussian", 9, _gaussian, (0.4, 1.0, 0.0), 15, 1.12793e-8,
             ref=5.639663848092989e-09),
        _mgh("meyer", 10, _meyer, (0.02, 4000.0, 250.0), 16, 87.9458,
             ref=43.972927585275905,
             note="very badly scaled (x ≈ (0.0056, 6181, 345))"),
        _mgh("gulf", 11, _gulf, (5.0, 2.5, 0.15), 99, 0.0,
             note="m = 99; minimum at (50, 25, 1.5); flat where exp(·) underflows "
                  "(100·x0 has a zero Jacobian)"),
        _mgh("box3d", 12, _box3d, (0.0, 10.0, 20.0), 10, 0.0,
             note="m = 10; zero-residual minima (1, 10, 1), (10, 1, -1) and the line "
                  "x1 = x2, x3 = 0"),
        _mgh("powell_singular", 13, _powell_singular, (3.0, -1.0, 0.0, 1.0), 4, 0.0,
             note="Jacobian singular at the minimiser 0: linear convergence"),
        _mgh("wood", 14, _wood, (-3.0, -1.0, -3.0, -1.0), 6, 0.0,
             note="minimum at (1, 1, 1, 1)"),
        _mgh("kowalik_osborne", 15, _kowalik_osborne, (0.25, 0.39, 0.415, 0.39), 11,
             3.07505e-4,
             ref=0.00015375280192461845,
             note="second minimum f = 1.02734e-3 at (+inf, -14.08, -inf, -inf)"),
        _mgh("brown_dennis", 16, _brown_dennis, (25.0, 5.0, -5.0, -1.0), 20, 85822.2,
             ref=42911.100813178164, note="m = 20"),
        _mgh("osborne1", 17, _osborne1, (0.5, 1.5, -1.0, 0.01, 0.02), 33, 5.46489e-5,
             ref=2.7324473487412585e-05),
        _mgh("biggs_exp6", 18, _biggs_exp6, (1.0, 2.0, 1.0, 1.0, 1.0, 1.0), 13,
             5.65565e-3,
             ref=0.0,
             note="m = 13; the data are exact, so f = 0 at (1, 10, 1, 5, 4, 3); MGH's "
                  "f = 5.65565e-3 is a local minimum (reference_cost is the global 0)"),
        _mgh("osborne2", 19, _osborne2,
             (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5), 65, 4.01377e-2,
             ref=0.020068868146773843),
        # Variable-size problems at standard sizes.
        _mgh("watson_n6", 20, _watson(6), (0.0,) * 6, 31, 2.28767e-3,
             ref=0.0011438350267761665),
        _mgh("watson_n9", 20, _watson(9), (0.0,) * 9, 31, 1.39976e-6,
             ref=6.998800690442378e-07),
        _mgh("extended_rosenbrock_n10", 21, _extended_rosenbrock, (-1.2, 1.0) * 5,
             10, 0.0),
        _mgh("penalty1_n10", 23, _penalty1, tuple(range(1, 11)), 11, 7.08765e-5,
             ref=3.5438257335451845e-05),
        _mgh("penalty2_n10", 24, _penalty2(10), (0.5,) * 10, 20, 2.93660e-4,
             ref=0.00014683026872837294),
        _mgh("variably_dimensioned_n10", 25, _variably_dimensioned,
             tuple(1.0 - j / 10.0 for j in range(1, 11)), 12, 0.0),
        _mgh("trigonometric_n10", 26, _trigonometric, (0.1,) * 10, 10, 0.0,
             note="LM/TRF end at the local minimum f = 2.79506e-5 (cost 1.39753e-5)"),
        _mgh("brown_almost_linear_n10", 27, _brown_almost_linear, (0.5,) * 10, 10, 0.0,
             note="also f = 1 at (0, ..., 0, n + 1)"),
        _mgh("linear_full_rank_n5_m10", 32, _linear_full_rank(10), (1.0,) * 5, 10, 5.0,
             note="f = m - n at x = (-1, ..., -1)"),
        _mgh("chebyquad_n8", 35, _chebyquad(8), tuple(j / 9.0 for j in range(1, 9)), 8,
             3.51687e-3, ref=0.0017584368628389623),
    ]
    for name, model, b_true, x, noise, seed, start in _SYNTHETIC_SPECS:
        probs.append(LeastSquares(
            name, _synthetic(model, b_true, x, noise, seed), tuple(map(float, start)),
            _SYNTHETIC_REFERENCE.get(name), "badly scaled, synthetic", len(x),
            f"true parameters {b_true}"))
    return {p.name: p for p in probs}


# Best ½‖r‖² found by scipy least_squares (LM and TRF, exact Jacobian, from the
# starts ×1, ×10, ×100 and from the true parameters; all agree to ~1e-13).
_SYNTHETIC_REFERENCE: dict[str, float] = {
    "exp_saturation": 0.016411548704224704,
    "rational_quadratic": 0.43427650164137155,
    "rational_cubic": 20.634578246658382,
    "arctan_step": 0.0003534692548278946,
    "two_gaussians": 70.38838249893618,
    "narrow_gaussian": 2.831821065935156e-05,
    "power_law": 0.0009254988032492142,
    "logistic": 35.905001355901916,
    "exp_decay_pair": 5.0901287062182875e-05,
}

PROBLEMS: dict[str, LeastSquares] = _build()

# x64 inside a `with`: ``jax.enable_x64`` from JAX 0.8, jax.experimental's
# before.
if hasattr(jax, "enable_x64"):
    _enable_x64 = jax.enable_x64
else:  # pragma: no cover - JAX < 0.8
    from jax.experimental import enable_x64 as _enable_x64


def starts(problem: LeastSquares,
           factors=(1, 10, 100)) -> list[tuple[float, np.ndarray]]:
    """The MGH convention: factor·x0 for each factor (float64 arrays)."""
    x0 = np.asarray(problem.start, dtype=np.float64)
    return [(f, f * x0) for f in factors]


def scipy_reference(problem: LeastSquares, x0, method: str = "lm", *,
                    tol: float = 1e-15, max_nfev: int = 100_000,
                    x_scale=None) -> dict:
    """Solve with ``scipy.optimize.least_squares`` using the exact Jacobian
    ``jax.jacfwd(residual)`` in float64 (x64 is switched on for the call).

    ``x_scale=None`` means MINPACK's Jacobian-column scaling (``"jac"``) for
    ``method="lm"`` and unit scaling for the other methods.

    Returns a dict with x, cost (½‖r‖²), success, status, nfev, njev, message.
    """
    from scipy.optimize import least_squares

    with _enable_x64(True):
        fun = jax.jit(problem.residual)
        jac = jax.jit(jax.jacfwd(problem.residual))

        def f(x):
            return np.asarray(fun(jnp.asarray(x, dtype=jnp.float64)), dtype=np.float64)

        def j(x):
            return np.asarray(jac(jnp.asarray(x, dtype=jnp.float64)), dtype=np.float64)

        x0 = np.asarray(x0, dtype=np.float64)
        if x_scale is None:
            x_scale = "jac" if method == "lm" else 1.0
        kwargs = {"method": method, "jac": j, "xtol": tol, "ftol": tol, "gtol": tol,
                  "max_nfev": max_nfev, "x_scale": x_scale}
        with np.errstate(all="ignore"):
            res = least_squares(f, x0, **kwargs)
    return {"x": res.x, "cost": float(res.cost), "success": bool(res.success),
            "status": int(res.status), "nfev": int(res.nfev),
            "njev": None if res.njev is None else int(res.njev), "message": res.message}
