"""The options of `ggn`: their allowed values, the defaults chosen by
measurement, and `GGNConfig`, which validates them on construction.

Each default here cites the section of BENCHMARKS.md that measured it.
Where `ggn` takes an option as None it resolves it by the loss
(`loss_defaults`) or by the problem's shape (`GGNConfig.resolved_options`).
Numbers that may change during training (``DYNAMIC_OPTIONS``) may be traced
scalars, as ``optax.inject_hyperparams`` passes them; the rest pick code
paths or size arrays and must be Python values.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ggn_jax.damping import DAMPING_RULES
from ggn_jax.losses import CLASSIFICATION_LOSSES
from ggn_jax.solvers import CG_STOPS, SOLVER_CODES, SOLVERS, solver_for

DAMPING_TYPES = ("levenberg", "marquardt")
CG_PRECONDITIONERS = ("diagonal", "kfac", "none")
# "highest": float32 matrix products in full float32 even where the backend
# would use TF32 or bf16 passes (GPU, TPU); "default": the backend's choice.
MATMUL_PRECISIONS = ("highest", "default")


# How ``primal`` factors its system (`ggn_jax.solvers.primal`).
PRIMAL_FACTORIZATIONS = ("auto", "cholesky", "qr")


# ``cross_batch_damping``'s one value beside True and False: μ grows by
# Nielsen's factor at the last step's gain ratio on the fresh samples
# (`ggn_jax.damping`), where True doubles it.
CROSS_BATCH_MODES = ("graded",)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


# The options that may change during training: ``optax.inject_hyperparams``
# hands them to `ggn` as arrays, traced under ``jit``. The other options pick
# code paths or fix array shapes and must be Python values.
DYNAMIC_OPTIONS = (
    "damping",
    "min_damping",
    "max_damping",
    "min_gain_ratio",
    "residual_exponent",
    "marquardt_floor",
    "cg_tol",
    "cg_warm_start_weight",
    "relative_damping_floor",
    "acceleration_ratio",
    "weight_decay",
    "momentum",
    "step_growth",
)
# Integer options that size the computation; None in `ggn`'s signature means
# the default here (so that ``optax.inject_hyperparams``, which turns every
# numeric argument into an array, leaves them static unless they are set).
STATIC_INTEGER_DEFAULTS = {"cg_max_iters": 100, "max_dense": 8192, "max_jacobian": 2**26}
# max_dense is the side of a dense matrix with as many entries as
# max_jacobian allows a per-sample Jacobian (8192² = 2²⁶: 512 MB in
# float64). At 4096 the Poisson 5-D PINN on 5-[64]-[64]-1 (P = 4609, 4500
# samples) fitted neither dense solver, and CG, the only one left, stalled
# at relative L2 2e-3 where the primal solve reaches 2.4e-5 in 30 steps
# (BENCHMARKS.md, "Dense solves up to 8192").
# The window of non-monotone acceptance where it is on by default (squared
# error). 8 against the earlier 4: on the PINN benchmarks the median steps to
# relative L2 1e-6 fell from 94 to 60 (Poisson 2-D) and from 112 to 55
# (heat), exact learning and the classic set solved the same
# (BENCHMARKS.md, "Window of 8").
DEFAULT_NONMONOTONE_WINDOW = 8
# The bound on a step's growth where it is on by default (squared error with
# N·K < P): a step at most twice as long as the last accepted one. On exact
# learning the worst step counts of the deep (34 → 24) and softplus (16 →
# 11) families fell, the other families' medians and worst stayed within a
# step (BENCHMARKS.md, "A bound on the step's growth").
DEFAULT_STEP_GROWTH = 2.0
# The bound α of geodesic acceleration (the correction is taken where
# 2‖a‖ ≤ α‖δ_v‖): Transtrum & Sethna's 0.75 where N·K < P and for residual
# blocks, and a stricter 0.25 where the acceleration is on by default for
# squared error with N·K ≥ P. There 0.75 carried osborne1 ×100 of the
# classic set to a stationary point where one exponential has died out (0 of
# 20 starts around the standard one solved, scipy lm 20); 0.25 solves every one of the 77
# standard runs that scipy lm solves. Where N·K < P 0.25 cost exact learning
# steps, and on the Poisson PINN in blocks it ended 3–400× less accurate
# after 200 steps (BENCHMARKS.md, "Geodesic acceleration where N·K ≥ P").
DEFAULT_ACCELERATION_RATIO = 0.75
OVERDETERMINED_ACCELERATION_RATIO = 0.25
# `ggn`'s defaults for a classification loss, where each update sees a new
# minibatch and a step is worth a few GGN products, not an exact solve:
# measured in BENCHMARKS.md, "Minibatch classification (issue 15)"; the
# graded cross-batch rule in "A step that hurt fresh samples, graded".
CLASSIFICATION_DEFAULTS = {"cg_max_iters": 5, "cg_preconditioner": "none", "momentum": 0.0,
                           "cross_batch_damping": "graded", "curvature_samples": 32,
                           "residual_exponent": 1.0, "geodesic_acceleration": False,
                           "shorten_rejected_steps": True}
# ... and for every other loss. Cross-batch damping acts only on a new
# batch; on minibatch regression and resampled PINN points it was measured
# in BENCHMARKS.md, "Cross-batch damping for every loss". The residual
# rule's δ = 2 (λ = μ‖r‖², the choice of Yamashita & Fukushima 2001) was
# measured against δ = 1 on exact learning, the classic set and a PINN:
# BENCHMARKS.md, "Damping defaults".
OTHER_DEFAULTS = {"cg_max_iters": None, "cg_preconditioner": "diagonal", "momentum": 0.0,
                  "cross_batch_damping": True, "curvature_samples": None,
                  "residual_exponent": 2.0, "geodesic_acceleration": None,
                  "shorten_rejected_steps": False}


# The options `ggn` takes as None and resolves by the loss.
BY_LOSS_OPTIONS = tuple(CLASSIFICATION_DEFAULTS)


def loss_defaults(loss: Any, solver: str = "auto", cg_max_iters: Any = None) -> dict[str, Any]:
    """The options `ggn` resolves by its loss where they are left at None:
    ``CLASSIFICATION_DEFAULTS`` for the named classification losses,
    ``OTHER_DEFAULTS`` otherwise (a ``cg_max_iters`` of None is 100). A
    ``"primal"`` or ``"dual"`` solver named by hand is asked for the exact
    step on the batch: its G comes from the whole batch, whatever the loss
    (the subsample is the short classification CG solve's default). So is
    a ``"cg"`` named by hand with a ``cg_max_iters`` above
    ``UNROLLED_ITERATIONS``, a CG meant to solve the system, not to take
    the short step (on 32 of 128 samples it solved another system: its
    step was 79% from the dual one)."""
    defaults = dict(CLASSIFICATION_DEFAULTS if isinstance(loss, str)
                    and loss in CLASSIFICATION_LOSSES else OTHER_DEFAULTS)
    if solver in SOLVER_CODES and solver_for(solver, None).solves_on_whole_batch(cg_max_iters):
        defaults["curvature_samples"] = None
    return defaults

# The default ceiling of λ, relative to max(1, tr(G)) (`damping_ceiling`).
DEFAULT_MAX_DAMPING = 1e12
# The default floor of λ where ``primal`` factors the Jacobian by QR, and
# for ``dual``: 100 float64 epsilons in every dtype, a λ > 0 that stands
# for "no damping left" (times min(1, tr(G)) in a step, so that it scales
# with G: `ggn_jax.transform.lowest_damping`). Elsewhere it is 100
# epsilons of the dtype, 1.2e-5 in float32, which is not small on every
# scale (float32 PINNs sat at it for hundreds of steps) but which a
# Cholesky of a float32 G needs: at 2.2e-14 float32 Poisson 2-D stalled at
# relative L2 1.2e-4–1.3e-4 (BENCHMARKS.md, "The damping floor in
# float32"). CG keeps it too (not measured lower).
FINE_MIN_DAMPING = 100 * 2.0**-52

# The default c of the relative damping floor (``relative_damping_floor``),
# by the dtype's width: 10 in float64, 0.1 in float32 and narrower. In
# float64 the floor c·eps·P·diag(G) of `primal` (3e-13 of each diagonal at
# P = 129) lies far below anything a fit resolves. In float32 G itself,
# formed in float32, is only good to about eps·‖G‖, and c = 10 (1.5e-4 of
# each diagonal at P = 129) cut off directions the fit still needed: PINNs
# stalled at relative L2 1e-4–3e-4 where c = 0.1 reaches 2e-5–5e-5 with no
# failed factorisation, and float32 exact learning went as low as with
# c = 0.03–0.3 on every family (BENCHMARKS.md, "The damping floor in
# float32"). Where G is singular (P > N·K) a float32 Cholesky at c = 0.1
# may fail: `primal` then factors again at c = 10 (`GGNConfig.primal_floors`).
WIDE_RELATIVE_DAMPING_FLOOR = 10.0
NARROW_RELATIVE_DAMPING_FLOOR = 0.1

# The allowed range of each numeric option: (test, what it says).
_RANGES = {
    "damping": (lambda v: math.isfinite(v) and v > 0, "be finite and > 0"),
    "min_damping": (lambda v: math.isfinite(v) and v > 0, "be finite and > 0"),
    "max_damping": (lambda v: math.isfinite(v) and v > 0, "be finite and > 0"),
    "marquardt_floor": (lambda v: math.isfinite(v) and v > 0, "be finite and > 0"),
    "cg_tol": (lambda v: math.isfinite(v) and v > 0, "be finite and > 0"),
    "relative_damping_floor": (lambda v: math.isfinite(v) and v >= 0, "be finite and ≥ 0"),
    "min_gain_ratio": (lambda v: 0 <= v < 1, "lie in [0, 1)"),
    "residual_exponent": (lambda v: 1 <= v <= 2, "lie in [1, 2]"),
    "cg_warm_start_weight": (lambda v: 0 <= v <= 1, "lie in [0, 1]"),
    "acceleration_ratio": (lambda v: math.isfinite(v) and v > 0, "be finite and > 0"),
    "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "be finite and ≥ 0"),
    "momentum": (lambda v: 0 <= v < 1, "lie in [0, 1)"),
    "step_growth": (lambda v: v >= 1, "be ≥ 1 (inf for no bound)"),
}


def _is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _dynamic_number(name: str, value: Any) -> Any:
    """A dynamic option as a Python float, or the tracer itself.

    Concrete scalars (Python, numpy or JAX) become Python floats, so that
    they never promote a float32 step and the config stays hashable; a
    traced scalar (inside ``jit``) is kept, its range unchecked.
    """
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        if np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}")
        if not jnp.issubdtype(value.dtype, jnp.floating) and not jnp.issubdtype(
            value.dtype, jnp.integer
        ):
            raise TypeError(f"{name} must be a real number, got an array of dtype {value.dtype}")
        return value if _is_traced(value) else float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _static_integer(
    name: str, value: Any, expected: str = "a positive integer", minimum: int = 1
) -> int:
    """An option that sizes the computation, as a Python int.

    A JAX array is refused whether traced or not: it is what
    ``optax.inject_hyperparams`` makes of every option, and under ``jit``
    it could not size anything; refusing it eagerly too keeps the two alike.
    """
    if isinstance(value, jax.Array):
        raise TypeError(
            f"{name} sizes the computation and cannot be a JAX array (traced or not); with "
            f"optax.inject_hyperparams pass static_args=('apply_fn', {name!r})"
        )
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        if jnp.issubdtype(value.dtype, jnp.integer):
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class GGNConfig:
    """The options of `ggn`, validated on construction (see `ggn`).

    The options in ``DYNAMIC_OPTIONS`` may be traced scalars (as
    ``optax.inject_hyperparams`` passes them); the others are Python values.

    Attributes:
      damping, damping_rule, damping_type, solver, min_damping, max_damping,
      min_gain_ratio, residual_exponent, marquardt_floor, cg_tol,
      cg_max_iters, cg_preconditioner, cg_warm_start_weight, cg_stop,
      relative_damping_floor, primal_factorization, matmul_precision,
      curvature_samples,
      max_dense, max_jacobian, nonmonotone_window, geodesic_acceleration,
      acceleration_ratio, weight_decay, momentum, cross_batch_damping,
      step_growth, shorten_rejected_steps: the
      keyword options of `ggn`, with its
      defaults and meanings. Where `ggn` takes an option as None it
      resolves it by the loss (``CLASSIFICATION_DEFAULTS``,
      ``OTHER_DEFAULTS``); the fields here keep plain defaults (e.g.
      ``cross_batch_damping=False``, which `fit`, with one batch, never
      reaches anyway).

    Example:
      >>> from ggn_jax import GGNConfig
      >>> GGNConfig(damping=1e-2, solver="dual").damping_rule
      'residual'
    """

    damping: float = 1e-3
    damping_rule: str = "residual"
    damping_type: str = "levenberg"
    solver: str = "auto"
    min_damping: float | None = None
    max_damping: float | None = None
    min_gain_ratio: float = 1e-4
    residual_exponent: float = 2.0
    marquardt_floor: float = 1e-6
    cg_tol: float = 1e-6
    cg_max_iters: int = 100
    cg_preconditioner: str = "diagonal"
    cg_warm_start_weight: float = 0.9
    cg_stop: str = "residual"
    relative_damping_floor: float | None = None
    primal_factorization: str = "auto"
    matmul_precision: str = "highest"
    curvature_samples: int | None = None
    max_dense: int = 8192
    max_jacobian: int = 2**26
    nonmonotone_window: int | None = None
    geodesic_acceleration: bool | None = None
    acceleration_ratio: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.0
    cross_batch_damping: bool | str = False
    step_growth: float | None = None
    shorten_rejected_steps: bool = False

    def __post_init__(self):
        _choice("damping_rule", self.damping_rule, DAMPING_RULES)
        _choice("damping_type", self.damping_type, DAMPING_TYPES)
        _choice("solver", self.solver, SOLVERS)
        _choice("cg_preconditioner", self.cg_preconditioner, CG_PRECONDITIONERS)
        _choice("cg_stop", self.cg_stop, CG_STOPS)
        _choice("primal_factorization", self.primal_factorization, PRIMAL_FACTORIZATIONS)
        _choice("matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
        for name in ("cross_batch_damping", "shorten_rejected_steps"):
            switch = getattr(self, name)
            if name == "cross_batch_damping" and isinstance(switch, str):
                _choice(name, switch, CROSS_BATCH_MODES)
                continue
            if switch is None:  # None: the default
                object.__setattr__(self, name, False)
            elif isinstance(switch, (np.ndarray, np.generic, jax.Array)) and np.ndim(switch) == 0:
                if _is_traced(switch):
                    raise TypeError(f"{name} picks a code path and cannot be traced")
                object.__setattr__(self, name, bool(switch))
            if getattr(self, name) not in (True, False):
                allowed = ('True, False or "graded"' if name == "cross_batch_damping"
                           else "True or False")
                raise TypeError(f"{name} must be None (the default), {allowed}, got "
                                f"{getattr(self, name)!r}")
        acceleration = self.geodesic_acceleration
        if _is_traced(acceleration):
            raise TypeError(
                "geodesic_acceleration picks a code path and cannot be traced; with "
                "optax.inject_hyperparams pass static_args=('apply_fn', 'geodesic_acceleration')"
            )
        if isinstance(acceleration, (np.ndarray, np.generic, jax.Array)) and np.ndim(acceleration) == 0:
            acceleration = bool(acceleration)
            object.__setattr__(self, "geodesic_acceleration", acceleration)
        if acceleration not in (None, True, False):
            raise TypeError(
                f"geodesic_acceleration must be None (auto), True or False, got {acceleration!r}"
            )
        for name in DYNAMIC_OPTIONS:
            value = getattr(self, name)
            if value is None and name in (
                "min_damping", "max_damping", "step_growth", "acceleration_ratio",
                "relative_damping_floor",
            ):
                continue
            value = _dynamic_number(name, value)
            object.__setattr__(self, name, value)
            if not _is_traced(value):
                test, allowed = _RANGES[name]
                if not test(value):
                    raise ValueError(f"{name} must {allowed}, got {value!r}")
        for name in STATIC_INTEGER_DEFAULTS:
            object.__setattr__(self, name, _static_integer(name, getattr(self, name)))
        if self.nonmonotone_window is not None:
            window = _static_integer(
                "nonmonotone_window", self.nonmonotone_window,
                "None (auto) or a non-negative integer", minimum=0,
            )
            object.__setattr__(self, "nonmonotone_window", window)
        if self.curvature_samples is not None:
            samples = _static_integer(
                "curvature_samples", self.curvature_samples, "a positive integer or None"
            )
            object.__setattr__(self, "curvature_samples", samples)
        self._check_order("min_damping", "max_damping")
        self._check_order("damping", "max_damping")

    def _check_order(self, low: str, high: str) -> None:
        a, b = getattr(self, low), getattr(self, high)
        if a is None or b is None or _is_traced(a) or _is_traced(b):
            return
        if a > b:
            raise ValueError(f"{low} ({a}) exceeds {high} ({b})")

    def window_size(self) -> int:
        """The length of the state's window of recent losses."""
        if self.nonmonotone_window is None:
            return DEFAULT_NONMONOTONE_WINDOW
        return self.nonmonotone_window

    def resolved_options(
        self, outputs: jax.Array, num_params: int, regression: bool | None = None,
        blocks: bool = False, least_squares: bool | None = None, *,
        squared_error: bool | None = None,
    ) -> tuple[int, bool, Any, Any]:
        """(window, acceleration, its ratio α, step growth c) for outputs
        (N, K) of a model with P parameters, None (auto) resolved as
        measured in BENCHMARKS.md ("Damping defaults", "Physics-informed
        fits", "A bound on the step's growth", "Geodesic acceleration where
        N·K ≥ P", "Convex callable losses get squared error's defaults").
        ``regression`` is `ggn_jax.losses.BoundLoss.regression_defaults`
        (squared error, or a callable convex in the outputs) and
        ``least_squares`` `ggn_jax.losses.BoundLoss.least_squares` (squared
        error, or a callable quadratic and convex; ``regression`` where
        None). The window for ``regression`` (exact learning, classic least
        squares, PINN residuals, robust and count regression), monotone
        for the others (the named classification losses, a loss not convex
        in the outputs); the acceleration for ``least_squares``, for any
        loss where N·K < P (the regime of exact learning) and for a problem
        in residual blocks (``blocks``: PDE residuals, whose strong
        nonlinearity in θ it corrects), with α = ``DEFAULT_ACCELERATION_RATIO``
        there and the stricter ``OVERDETERMINED_ACCELERATION_RATIO`` where
        N·K ≥ P; the bound ‖δ_k‖ ≤ c·‖δ_prev‖
        (`ggn_jax.damping.step_growth_factor`) with ``DEFAULT_STEP_GROWTH``
        for ``regression`` where N·K < P, none (inf) elsewhere.
        ``squared_error``, this argument's earlier name, sets both
        ``regression`` and ``least_squares`` (with a DeprecationWarning)."""
        if squared_error is not None:
            warnings.warn(
                "resolved_options(squared_error=...) is now regression=... (squared error, "
                "or a callable convex in the outputs) with least_squares=... (squared error, "
                "or a callable quadratic and convex)", DeprecationWarning, stacklevel=2)
            regression = squared_error if regression is None else regression
            least_squares = squared_error if least_squares is None else least_squares
        if regression is None:
            raise TypeError("resolved_options() needs regression (True for squared error, or "
                            "a callable convex in the outputs)")
        if least_squares is None:
            least_squares = regression
        over = outputs.size < num_params
        window = self.nonmonotone_window
        if window is None:
            window = DEFAULT_NONMONOTONE_WINDOW if regression else 0
        acceleration = self.geodesic_acceleration
        if acceleration is None:
            acceleration = over or blocks or least_squares
        ratio = self.acceleration_ratio
        if ratio is None:
            ratio = (DEFAULT_ACCELERATION_RATIO if (over or blocks)
                     else OVERDETERMINED_ACCELERATION_RATIO)
        growth = self.step_growth
        if growth is None:
            growth = DEFAULT_STEP_GROWTH if (over and regression) else math.inf
        return window, acceleration, ratio, growth

    def damping_floor(self, dtype) -> Any:
        """c of the relative damping floor in ``dtype``: the option where
        set, else ``WIDE_RELATIVE_DAMPING_FLOOR`` (10) for a 64-bit dtype
        and ``NARROW_RELATIVE_DAMPING_FLOOR`` (0.1) for a narrower one."""
        if self.relative_damping_floor is not None:
            return self.relative_damping_floor
        if jnp.finfo(dtype).bits >= 64:
            return WIDE_RELATIVE_DAMPING_FLOOR
        return NARROW_RELATIVE_DAMPING_FLOOR

    def primal_floors(self, dtype) -> tuple[Any, float | None]:
        """(c, the fallback c) of `primal`'s floor c·eps·P·diag(G): with the
        default in a narrow dtype, a factorisation that fails at c = 0.1 is
        done again at c = 10 (a singular G of a float32 fit needs it); a
        c that was set, or float64's 10, has no fallback."""
        floor = self.damping_floor(dtype)
        if self.relative_damping_floor is None and jnp.finfo(dtype).bits < 64:
            return floor, WIDE_RELATIVE_DAMPING_FLOOR
        return floor, None

    def damping_bounds(self, dtype, fine: bool = False) -> tuple[Any, Any]:
        """[min, max] for λ before the curvature is known: the default floor
        is 100 machine epsilons of dtype, or ``FINE_MIN_DAMPING`` (100
        float64 epsilons) where the solve holds up at a tiny λ (``fine``:
        ``primal`` by QR, ``dual``); both defaults (None) are absolute
        here and relative to tr(G) in a step: the floor times min(1,
        tr(G)) (`lowest_damping`), the ceiling ``DEFAULT_MAX_DAMPING``
        times max(1, tr(G)) (`damping_ceiling`)."""
        info = jnp.finfo(dtype)
        low = (FINE_MIN_DAMPING if fine else 100 * float(info.eps)) \
            if self.min_damping is None else self.min_damping
        high = DEFAULT_MAX_DAMPING if self.max_damping is None else self.max_damping
        # Keep λ·(anything of order one) finite in the dtype.
        ceiling = float(info.max) ** 0.5
        if _is_traced(high):
            return low, jnp.minimum(high, ceiling)
        return low, min(high, ceiling)


# Options renamed in issue 12, accepted for one release with a warning.
DEPRECATED_OPTIONS = {"cg_warm_start": "cg_warm_start_weight"}


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def make_config(**options: Any) -> GGNConfig:
    """A `GGNConfig` from keyword options; unknown names fail, listing the allowed.

    ``None`` for ``cg_max_iters``, ``max_dense`` or ``max_jacobian``, and
    for an option that `ggn` resolves by its loss (``BY_LOSS_OPTIONS``),
    means the `GGNConfig` default. A deprecated name
    (``DEPRECATED_OPTIONS``) is accepted with a ``DeprecationWarning``.
    """
    for old, new in DEPRECATED_OPTIONS.items():
        if old in options:
            value = options.pop(old)
            if value is not None:
                if new in options:
                    raise TypeError(f"pass {new} or its deprecated name {old}, not both")
                _deprecated(f"the option {old}", new)
                options[new] = value
    allowed = [f.name for f in dataclasses.fields(GGNConfig)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    for name, default in STATIC_INTEGER_DEFAULTS.items():
        if options.get(name, default) is None:
            options[name] = default
    # The options `ggn` resolves by its loss where they are None: here (as
    # in `fit`, which takes no loss defaults) None is GGNConfig's default.
    for name in BY_LOSS_OPTIONS:
        if name in options and options[name] is None:
            del options[name]
    return GGNConfig(**options)
