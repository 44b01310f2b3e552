"""The gain ratio, the accept/reject test and the damping rules.

The damping λ in (G + λD)δ = −g interpolates between a Gauss-Newton step
(λ → 0) and a short gradient step δ ≈ −g/λ (λ large). It is measured in the
units of G: a λ well above G's large eigenvalues means "do not trust the
quadratic model", well below its small ones means "trust it fully". Since G is
the Hessian of the *mean* loss, λ does not scale with the batch size.

The gain ratio compares the actual decrease of the loss with the decrease the
quadratic model m(δ) = L + gᵀδ + ½δᵀGδ predicts:

    ρ = (L(θ) − L(θ + δ)) / (−gᵀδ − ½ δᵀGδ).

A step is accepted when the trial loss is finite, the predicted decrease is
positive and the actual decrease exceeds η times it (η = ``min_gain_ratio``);
the test is written without division. When both decreases are below the
round-off of the loss, the step is accepted (see `accept_step`). All rules below run inside ``jit``.

Rules (μ is the state's ``damping_scale``):

* ``nielsen`` (Nielsen 1999; Madsen, Nielsen & Tingleff 2004): λ = μ. On
  success μ ← μ·max(1/3, 1 − (2ρ − 1)³), ν ← 2; on rejection μ ← μ·ν, ν ← 2ν.
* ``martens`` (Martens 2010): λ = μ; μ ← 3/2·μ if ρ < ¼ (or rejected),
  μ ← 2/3·μ if ρ > ¾.
* ``residual`` (Yamashita & Fukushima 2001; Fan & Yuan 2005): λ = μ·‖r‖^δ,
  δ ∈ [1, 2], with μ adapted by Nielsen's rule above. As the residual
  vanishes so does λ, which gives local quadratic convergence under a local
  error bound, even where the minimisers are not isolated — the
  exact-learning case, where zero-loss points form a manifold of dimension
  P − T·K. Here ‖r‖ = √(2L): the root-mean-square residual for squared
  error, and for the other named losses the same expression, which
  vanishes where the loss does; with a loss whose minimum is not zero, μ
  alone drives λ down. For a callable loss, whose value need not be 0 (or
  ≥ 0) at a fit, ‖r‖ is the RMS of the output gradients ∇_o l_i (√(2L)
  again for ½‖o − y‖²; `ggn_jax.problem.residual_norm`).
  (Fan & Yuan adapt μ by fixed factors 4 and ¼; measured on our
  benchmark problems, Nielsen's smooth update rejects far fewer steps.)
  `ggn` takes δ = 2 (Yamashita & Fukushima's λ = ‖r‖², so λ = μ·2L)
  except for the classification losses (δ = 1). With δ = 1 λ falls only
  as the square root of the loss; on exact learning δ = 2 lowered the
  worst step count on every family measured and the median on most, and
  it took a Poisson PINN 2–4× further in 1000 steps (BENCHMARKS.md,
  "Damping defaults"). Since λ then starts at μ·2L, a fit whose loss
  starts huge (residuals of 10⁶–10⁸) starts from a huge λ, and μ needs a
  few dozen steps to bring it down (μ's floor, below, lets it go as far
  as that takes).
* ``fixed``: λ = μ never changes and every finite step is accepted: the
  pure GGN iteration of Shen (2018) with a tiny λ and step size 1. Only a
  fault (a NaN or Inf, a failed solve) rejects a step; where the step is
  at fault (the data were finite), λ then grows as under Nielsen's rule
  until a step is taken, and returns to μ after it.

λ is clipped to [λ_min, λ_max]; by default `ggn` passes λ_max =
10¹²·max(1, tr(G)), since λ is measured in the units of G and an absolute
cap can sit below G's largest eigenvalue, and for the same reason λ_min =
100·eps·min(1, tr(G)) (`lowest_damping` in `ggn_jax.transform`: a
fixed floor slowed or stalled exact learning with outputs and targets
scaled by 10⁻⁴, where the unscaled fits converged; the ``min_damping`` a
user sets is absolute). μ is kept between the values
whose λ are those bounds (`scale_bounds`): for the
residual rule, min_damping/‖r‖^δ and λ_max/‖r‖^δ. A floor of μ at
min_damping itself would hold λ at 10⁻¹⁴·2L on a loss that starts huge
(targets of 10⁸ from θ = 0: λ ≥ 5·10³, and a linear least-squares fit
stalled after 80 steps). ν is capped so that a long run of rejections
cannot overflow it.

**Non-monotone acceptance** (Grippo, Lampariello & Lucidi 1986; for trust
regions Toint 1997). With a window of M > 0, the actual decrease is measured
from the reference R = max(L(θ_k), L(θ_{k−1}), …, L(θ_{k−M})) over the
current and the last M accepted iterates, not from L(θ_k): a step may raise
the loss a little as long as it stays below R and the model predicts a
decrease. Since R never grows, the loss of every M+1-th iterate still
falls. On exact learning this keeps the Gauss-Newton steps that overshoot
once and then converge quadratically — the pure iteration of the paper —
where a monotone test would reject them and raise λ. The rules adapt μ by
ρ on steps the monotone test accepts; a step accepted by the window alone
is kept but μ grows by 1.5, so that such steps cannot cycle at a tiny λ.

**A bound on the step's growth** (``step_growth`` = c). On the same
batch, a step longer than c times the last accepted step is shortened
along its direction to that length, ‖δ_k‖ ≤ c·‖δ_prev‖, before the gain
ratio is measured (the model's decrease is that of the shortened step).
It is the growth half of the step bound of a trust region, put on top of
the damping rule: Moré's Levenberg-Marquardt (*The Levenberg-Marquardt
algorithm: implementation and theory*, 1978; MINPACK) sets its bound to
Δ = 2‖Dδ‖ after a good step, the c = 2 taken here by default. On exact learning a very successful step lowers L by orders of
magnitude; with δ = 2 the next λ = μ·2L then falls as far, and the next
Gauss-Newton step overshoots the quadratic model by a large factor (ρ of
−10³ to −10⁷ on a 2-[16]-[16]-1 net), which the window accepts and the
step after undoes: a cycle of good and wasted steps. With c = 2 such a
step is cut to twice the last one. In the final, quadratic phase the steps
shrink, so the bound never binds there; a new batch, or no accepted step
yet, lifts it, and a rejection on a new batch keeps it lifted until a
step is taken there (the step before was another batch's). Shortening
costs nothing: no second solve.

**Across minibatches** (``cross_batch_damping``). On a minibatch the gain
ratio is measured on the samples the step was fitted to, so it cannot see
a step that fits them too well. When the batch is new and the last step
was accepted, the step also measures that last step on the fresh samples,
ρ̃ = (L_new(θ − δ_prev) − L_new(θ)) / (its predicted decrease), a paired
difference on one batch. Where ρ̃ < 0 (the last step raised the loss of
samples it did not see) μ is updated as for ρ = 0, i.e. doubled under
Nielsen's rule (``cross_batch_damping=True``), or, ``"graded"`` (the
default for classification), as for ρ = max(ρ̃, −½): Nielsen's factor
1 − (2ρ − 1)³ read for a failure, 2 for a rise near 0 and up to 9
(``CROSS_BATCH_RHO_FLOOR``), so that steps which keep undoing on fresh
samples much of what they gain on their own batch (a small minibatch that
each step can fit, noisy labels) drive λ up faster than one doubling a
batch; a rise within the loss's round-off, or a ρ̃ that is not defined,
counts as ρ = 0 there too. Otherwise ρ rules as above. (Using ρ̃ in place
of ρ throughout, or min(ρ, ρ̃) also where ρ̃ > 0, was measured and
rejected: for a small step ρ̃ is about the minibatch gradient's
signal-to-noise ratio, well below ½, so μ grew without bound and the
digits CNN stalled below 96%. Graded is not the default for other
losses: on noise-free minibatch regression and resampled PINN points it
ended 6× and 30× less accurate.)

**A rejected step, shortened** (``shorten_rejected_steps``). A rejected
trial still measured the loss along its direction: with L(θ), the slope
s = bᵀδ < 0 and the trial loss L(θ + δ), the parabola
p(α) = L(θ) + sα + (L(θ + δ) − L(θ) − s)α² has its minimum at
α* = −s / (2(L(θ + δ) − L(θ) − s)), which is ≤ ½ whenever the trial
raised the loss. The step then evaluates the loss once more, at θ + α*δ,
and takes α*δ if that passes the monotone test (actual > η·predicted, the
model's decrease for α*δ being −α*s − ½α*²δᵀGδ; neither the window nor
the round-off rule applies to it); otherwise it rejects as before. The
``fixed`` rule rejects only non-finite steps and never shortens. This is
backtracking with one quadratic interpolation (Nocedal & Wright,
*Numerical Optimization*, 2006, §3.5) after the damping's own test: λ still grows as after a rejection, so the next step is shorter
anyway, but the samples of this batch are not wasted. It applies only
once some step has been taken: before that λ is the initial guess, and a
trial rejected at it can be far off (on the synthetic set of the
benchmarks one such step, shortened at the third iteration, left the
run 1–2 points of test accuracy behind for thousands of steps). Early on,
where μ is still far below its level, and on minibatches, where a
rejected step's batch does not come back, it cut the time to the target
accuracy by 8–35% on the five digits configs of the benchmarks
(BENCHMARKS.md, "Shortened rejected steps"). The second loss costs one
forward pass, only on a rejected step.

**Round-off.** Near a minimum the change of the loss is lost in round-off:
in L itself (a few eps·|L|) and in the outputs, each computed to about
eps·|o|, which moves the loss by |∂l/∂o|·eps·|o| per output
(`roundoff_noise`). Where both decreases are below that noise the step is
judged by the noise (`accept_step`), so that λ neither ratchets up on steps
that round-off rejects nor stalls the iteration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DAMPING_RULES = ("nielsen", "martens", "residual", "fixed")
_MAX_NU = 2.0**30
# μ's factor after a step accepted by the non-monotone window alone
# (measured: 1.5 breaks cycles and costs exact learning the fewest steps).
WINDOW_GROWTH = 1.5
# The lowest gain ratio on fresh samples that ``cross_batch_damping="graded"``
# grades by: Nielsen's factor 1 − (2ρ − 1)³ is 9 there (−1.5, a factor of
# 65, left worse worst cases on small noisy sets and on two digits
# configs; BENCHMARKS.md, "A step that hurt fresh samples, graded").
CROSS_BATCH_RHO_FLOOR = -0.5


def gain_ratio(actual: jax.Array, predicted: jax.Array) -> jax.Array:
    """ρ = actual / predicted decrease; −1 where it is undefined or not finite."""
    valid = (predicted > 0) & jnp.isfinite(actual) & jnp.isfinite(predicted)
    rho = actual / jnp.where(valid, predicted, 1)
    return jnp.where(valid & jnp.isfinite(rho), rho, -1).astype(actual.dtype)


# c of the second-order term of `roundoff_noise`, ½·mean_i ‖c·eps·o_i‖².
ROUNDOFF_QUADRATIC = 4


def roundoff_noise(
    loss: jax.Array, outputs: jax.Array, output_grads: jax.Array,
    squared_error: bool = False,
) -> jax.Array:
    """The round-off in the mean loss: 64·eps·(|L| + mean_i Σ_k |∂l_i/∂o_ik|·|o_ik|),
    plus ½·mean_i ‖c·eps·o_i‖² (c = ``ROUNDOFF_QUADRATIC``) for squared error.

    The second term is the loss's response to a relative error eps in each
    output; at the floor of a zero-residual fit (r ≈ eps·|o|) it is larger
    than L itself, so the loss there is pure noise. It is first order in
    the error e of an output, r·e; squared error adds ½e², which is all
    that is left once r is smaller than e: a trial step from the floor
    measures a loss of order (eps·|o|)²/2 whatever it does, and without
    the last term such a step was rejected again and again, each time growing
    μ while λ stayed at its floor, until a new batch met λ at its ceiling
    (BENCHMARKS.md, "The oldest JAX the suite passes on, and the round-off
    floor of squared error").
    """
    eps = jnp.finfo(loss.dtype).eps
    sensitivity = jnp.sum(jnp.abs(output_grads) * jnp.abs(outputs)) / outputs.shape[0]
    noise = 64 * eps * (jnp.abs(loss) + sensitivity.astype(loss.dtype))
    if squared_error:
        spread = ROUNDOFF_QUADRATIC * eps * outputs
        noise = noise + (0.5 * jnp.sum(spread * spread) / outputs.shape[0]).astype(loss.dtype)
    return jnp.where(jnp.isfinite(noise), noise, 64 * eps * jnp.abs(loss))


# The period of the fingerprint's weights: a prime, so that two samples (or
# two entries of one sample) share their weights only when they are that
# many apart.
FINGERPRINT_PERIOD = 4093
_SAMPLE_WEIGHTS = np.cos(0.6180339887498949 * np.arange(FINGERPRINT_PERIOD))
_ENTRY_WEIGHTS = np.cos(0.7548776662466927 * np.arange(FINGERPRINT_PERIOD) + 1.0)
# The weight of a leaf's binary exponent in the fingerprint (1/φ²).
_EXPONENT_WEIGHT = 0.3819660112501051


def _periodic(table: np.ndarray, n: int, dtype) -> jax.Array:
    """The first n weights of the periodic sequence ``table[i mod m]``."""
    weights = jnp.asarray(table, dtype)
    if n <= table.size:
        return weights[:n]
    return weights[jnp.arange(n) % table.size]


def batch_fingerprint(batch, dtype) -> jax.Array:
    """A number that identifies a batch: Σ_leaves (2^{−e} aᵀ X b + e/φ²),
    with X the leaf as a matrix of its samples (rows) by the rest of its
    entries, periodic weights a_i = cos((i mod m)/φ) over samples and
    b_j = cos((j mod m)/ψ + 1) over entries, φ the golden ratio, ψ the
    plastic number, m = ``FINGERPRINT_PERIOD``, and e the binary exponent
    of max|X| (``frexp``). Scaling each leaf's term by a power of two near
    its size is exact, so a leaf of large numbers (raw PRNG keys, whose
    words reach 4·10⁹) does not swamp the others in float32, and a leaf
    scaled as a whole still moves the sum (by 2^{−e} of its term, or by
    e/φ² where e changes). A typed PRNG key leaf enters as its key data; a
    leaf with no samples adds nothing. The same arrays give the
    same bits in the same program; another batch differs with probability
    one. (Comparing the loss at θ with the last trial loss cannot tell:
    round-off in a PDE residual, a cancellation of large terms, can exceed
    any fixed tolerance.) A batch with a NaN or an overflow gets NaN, equal
    to no fingerprint.

    The weights are constants of m numbers each, and X is never flattened
    across samples: X b is one matrix-vector product per leaf, and on a
    batch split over devices along samples each device reduces its own
    rows (`ggn_jax.sharding`; a weight on the flat index can make XLA
    gather the whole batch onto every device).
    """
    total = jnp.zeros((), dtype)
    for leaf in jax.tree_util.tree_leaves(batch):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # (..., words): a sample's words are entries
        x = leaf.astype(dtype)
        if x.size == 0:
            continue
        x = x.reshape(1, 1) if x.ndim == 0 else x.reshape(x.shape[0], -1)
        n, d = x.shape
        per_sample = x @ _periodic(_ENTRY_WEIGHTS, d, dtype)
        term = jnp.dot(_periodic(_SAMPLE_WEIGHTS, n, dtype), per_sample)
        _, exponent = jnp.frexp(jnp.max(jnp.abs(x)))
        total = total + jnp.ldexp(term, -exponent) + _EXPONENT_WEIGHT * exponent.astype(dtype)
    return jnp.where(jnp.isfinite(total), total, jnp.nan)


def nonmonotone_reference(recent: jax.Array, loss: jax.Array) -> jax.Array:
    """R = max(L(θ_k), recent losses); unused slots of ``recent`` hold a
    number below any loss (−inf, or the dtype's lowest)."""
    if recent.shape[0] == 0:
        return loss
    return jnp.maximum(loss, jnp.max(recent))


def remember_loss(recent: jax.Array, loss: jax.Array, accepted: jax.Array) -> jax.Array:
    """The window after a step: L(θ_k) enters (the oldest leaves) if accepted."""
    if recent.shape[0] == 0:
        return recent
    shifted = jnp.roll(recent, 1).at[0].set(loss.astype(recent.dtype))
    return jnp.where(accepted, shifted, recent)


def accept_step(
    rule: str,
    actual: jax.Array,
    predicted: jax.Array,
    min_gain_ratio: float,
    noise: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Whether to take the step, and whether the decision was made in round-off.

    ``fixed`` accepts every step whose trial loss is finite; the other rules
    also need predicted > 0 and actual > η·predicted. Near a minimum with
    non-zero loss both decreases fall below the round-off ``noise`` of the
    loss itself and ρ is noise; a step is then accepted when the model
    predicts a change below the noise and the loss does not rise above it,
    so Gauss-Newton keeps converging instead of stalling at √eps accuracy.

    Returns:
      (accepted, in_roundoff), traced booleans.
    """
    finite = jnp.isfinite(actual) & jnp.isfinite(predicted)
    in_roundoff = finite & (jnp.abs(predicted) <= noise) & (actual >= -noise)
    if rule == "fixed":
        return finite, in_roundoff
    measured = (predicted > 0) & (actual > min_gain_ratio * predicted)
    return finite & (measured | in_roundoff), in_roundoff


def shortened_step_length(
    loss: jax.Array, slope: jax.Array, trial_loss: jax.Array
) -> jax.Array:
    """α* ∈ (0, 1), the minimiser of the parabola through the loss L(θ)
    with slope s = bᵀδ at α = 0 and the trial loss L(θ + δ) at α = 1:
    α* = −s / (2(L(θ + δ) − L(θ) − s)); NaN where that parabola has no
    minimum in (0, 1) (s ≥ 0, a curvature ≤ 0, or values not finite).
    """
    curvature = trial_loss - loss - slope
    valid = (slope < 0) & (curvature > 0) & jnp.isfinite(curvature)
    alpha = -slope / (2 * jnp.where(valid, curvature, 1))
    valid = valid & (alpha > 0) & (alpha < 1)
    return jnp.where(valid, alpha, jnp.nan).astype(loss.dtype)


def step_damping(
    rule: str,
    damping_scale: jax.Array,
    residual_norm: jax.Array,
    exponent: float,
    min_damping: float,
    max_damping: float,
) -> jax.Array:
    """The λ of this step: μ, or μ·‖r‖^δ for the residual rule, clipped."""
    if rule == "residual":
        damping = damping_scale * jnp.where(
            jnp.isfinite(residual_norm), residual_norm, 1
        ) ** exponent
    else:
        damping = damping_scale
    return jnp.clip(damping, min_damping, max_damping)


def scale_bounds(
    rule: str,
    residual_norm: jax.Array,
    exponent: float,
    min_damping: jax.Array | float,
    max_damping: jax.Array | float,
) -> tuple[jax.Array, jax.Array]:
    """[μ_min, μ_max]: the μ whose λ are ``min_damping`` and ``max_damping``.

    For the residual rule, λ = μ·‖r‖^δ, so the bounds are min_damping/‖r‖^δ
    and max_damping/‖r‖^δ; the floor only ever falls below min_damping
    (‖r‖^δ > 1) and the ceiling only ever rises above max_damping
    (‖r‖^δ < 1). Near a zero residual ‖r‖^δ is tiny (with δ = 2, 2L), and
    a cap of μ at max_damping would cap λ at max_damping·‖r‖^δ, too small
    to stop the rejections next to a singular minimum. On a loss that
    starts huge (residuals of 10⁷, L ≈ 10¹⁵), a floor of μ at min_damping
    would hold λ at 10⁻¹⁴·10¹⁵ whatever the curvature, and every step would
    be a short gradient step. λ itself is still clipped to the bounds
    (`step_damping`). Both are kept finite and normal in the dtype. Other
    rules: the bounds themselves.
    """
    dtype = residual_norm.dtype
    low = jnp.asarray(min_damping, dtype)
    high = jnp.asarray(max_damping, dtype)
    if rule != "residual":
        return low, high
    weight = residual_norm**exponent
    usable = jnp.isfinite(weight) & (weight > 0)
    weight = jnp.where(usable, weight, 1)
    info = jnp.finfo(dtype)
    floor = jnp.maximum(jnp.minimum(low / weight, low), info.tiny / info.eps)
    ceiling = jnp.clip(high / weight, high, jnp.sqrt(info.max))
    return floor, ceiling


def step_growth_factor(
    step_norm: jax.Array,
    last_norm: jax.Array,
    growth: jax.Array | float,
    same_batch: jax.Array | bool,
) -> jax.Array:
    """t ∈ (0, 1] that bounds the step: ‖tδ‖ ≤ c·‖δ_prev‖ (c = ``growth``).

    t = c·‖δ_prev‖/‖δ‖ where the step is longer than that on the batch the
    last accepted step δ_prev was taken on; 1 otherwise (a new batch, no
    accepted step yet, c = inf, or a step that is not finite, which the
    acceptance test rejects anyway).
    """
    bound = growth * last_norm
    binding = (
        jnp.asarray(same_batch) & (last_norm > 0) & jnp.isfinite(bound)
        & jnp.isfinite(step_norm) & (step_norm > bound)
    )
    tiny = jnp.finfo(step_norm.dtype).tiny
    return jnp.where(binding, bound / jnp.maximum(step_norm, tiny), 1).astype(step_norm.dtype)


def update_damping(
    rule: str,
    damping_scale: jax.Array,
    nu: jax.Array,
    rho: jax.Array,
    accepted: jax.Array,
    min_damping: float,
    max_damping: float,
    window_only: jax.Array | bool = False,
    fixed_value: jax.Array | float | None = None,
    data_finite: jax.Array | bool = True,
) -> tuple[jax.Array, jax.Array]:
    """The next (μ, ν) from this step's gain ratio and acceptance.

    ρ = ½ leaves μ unchanged under every rule. A step accepted by the
    non-monotone window alone (``window_only``) is kept, but its model
    failed the monotone test: μ grows by ``WINDOW_GROWTH`` (ν resets as
    after any accepted step), so that such steps cannot cycle between two
    losses at a tiny λ.

    Under ``fixed`` a step is rejected only where something was not finite
    or the solve failed; the same λ would repeat the same step, so μ grows
    by ν as under Nielsen's rule, and the next taken step returns it to
    ``fixed_value`` (the ``damping`` option; μ as it is where None). Bad
    data (``data_finite`` False) are no fault of λ: (μ, ν) stay.
    """
    one = jnp.ones_like(damping_scale)
    if rule in ("nielsen", "residual"):
        shrink = jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3)
        scale = jnp.where(accepted, damping_scale * shrink, damping_scale * nu)
        nu = jnp.where(accepted, 2 * one, jnp.minimum(2 * nu, _MAX_NU))
    elif rule == "martens":
        up, down = 1.5, 2 / 3
        bad = ~accepted | (rho < 0.25)
        good = accepted & (rho > 0.75)
        factor = jnp.where(bad, up, jnp.where(good, down, 1.0))
        scale = damping_scale * factor.astype(damping_scale.dtype)
    else:
        back = damping_scale if fixed_value is None else jnp.asarray(fixed_value, damping_scale.dtype)
        grow = ~accepted & data_finite
        scale = jnp.where(accepted, back, jnp.where(grow, damping_scale * nu, damping_scale))
        nu = jnp.where(accepted, 2 * one, jnp.where(grow, jnp.minimum(2 * nu, _MAX_NU), nu))
    scale = jnp.where(window_only, damping_scale * WINDOW_GROWTH, scale)
    return jnp.clip(scale, min_damping, max_damping), nu
