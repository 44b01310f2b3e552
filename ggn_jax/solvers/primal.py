"""``primal``: factor the P×P matrix G + λD by Cholesky, or, in float32
with identity loss Hessians and N·K ≥ P, by a QR factorisation of the
Jacobian (``primal_factorization``, `uses_qr`).

Cost O(NK·P² + P³) on top of the per-sample Jacobians: the cheap one when
P is small (P ≪ NK).

Why QR in float32. G = J̄ᵀJ̄ formed in float32 is good only to about
eps·‖G‖, so a Cholesky of G + λD cannot resolve directions whose
curvature is below that, and it needs a floor (``relative_damping_floor``)
to stay factorable. The triangular factor R of J̄ = QR (Householder) is
good to eps·‖J̄‖ instead, √ of G's scale, and [R; √(λD)] has a QR factor
for every λ > 0: the same step without the floor (the least-squares
route of Levenberg-Marquardt codes since MINPACK; Moré 1978, "The
Levenberg-Marquardt algorithm: implementation and theory"). About the
flops of forming G where N·K ≥ P, but LAPACK's QR runs slower than a
matrix product: a step takes 1.6–2.1× the time (BENCHMARKS.md, "The
damping floor in float32"). On a batch sharded over s > 1 devices, each
run of samples (a block, or the batch) with at least P rows a device is
factored in its s slices first (TSQR, `jacobian_factor`): each device
factors its own rows, and only s·P² numbers of such a run are gathered.
Shorter runs are gathered whole.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve, solve_triangular
from jax.sharding import PartitionSpec

from ggn_jax.curvature import dense_ggn, join_runs
from ggn_jax.sharding import BATCH_AXIS
from ggn_jax.solvers.base import (
    LocalModel,
    ProblemShape,
    Solver,
    damped_diagonal,
    direct_info,
    jacobian_along,
    local_from_jacobians,
)


def solve_primal(
    ggn: jax.Array,
    grad: jax.Array,
    damping: jax.Array,
    scale: jax.Array | None,
    relative_floor: float | jax.Array = 0.0,
    fallback_floor: float | None = None,
) -> jax.Array:
    """δ = −(G + max(λD, F))⁻¹ g by Cholesky of the P×P matrix.

    F = c·eps·P·diag(G) (c = ``relative_floor``) is the floor that keeps the
    matrix factorable in floating point, a floor under each diagonal entry
    of λD, not an addition to it: where λD is above it the matrix is
    G + λD itself, so the step is the damped system's own (added, it put a
    minibatch primal step 3e-8 from the dual one at λ = 1e-6 in float64).
    In the Jacobi-scaled matrix S G S (S = diag(G)^{-1/2}, unit diagonal,
    trace P) it adds at least c·eps·P to every eigenvalue: above the
    round-off of a Cholesky of that matrix, whose backward error is
    relative to its diagonal. Being relative to each
    parameter's own curvature, F is invariant under a rescaling of the
    parameters, unlike a floor on λ tied to tr(G), which the largest-scale
    parameter dominates and which swamps the curvature of the small-scale
    ones (Moré–Garbow–Hillstrom's "badly scaled" problems).

    Args:
      ggn: G, (P, P).
      grad: g, (P,).
      damping: λ > 0.
      scale: the diagonal of D (P,), or None for D = I.
      relative_floor: c ≥ 0 of the floor F; 0 for none.
      fallback_floor: a larger c to factor with where the factorisation
        with ``relative_floor`` fails (a second Cholesky, only then; under
        ``vmap`` the ``lax.cond`` is a select and both run); None for none.

    Returns:
      δ, (P,); NaN where the factorisation failed.
    """
    p = grad.shape[0]
    diagonal = damped_diagonal(p, damping, scale)

    def solve(c):
        floored = jnp.maximum(diagonal, c * jnp.finfo(ggn.dtype).eps * p * jnp.diag(ggn))
        matrix = ggn + jnp.diag(floored.astype(ggn.dtype))
        return -cho_solve(cho_factor(matrix, lower=True), grad)

    step = solve(relative_floor)
    if fallback_floor is None:
        return step
    return jax.lax.cond(jnp.all(jnp.isfinite(step)), lambda: step,
                        lambda: solve(fallback_floor))


def jacobian_factor(
    jac: jax.Array | tuple[jax.Array, ...],
    shards: int = 1,
    slicing: tuple[Any, tuple[str, ...]] | None = None,
) -> jax.Array:
    """R of the QR factorisation of J̄ = N^{-1/2}[J_1; …; J_N] (NK×P), so
    RᵀR = G for identity loss Hessians; (min(NK, P), P).

    With ``shards`` = s > 1, a tall-skinny QR (TSQR; Demmel, Grigori,
    Hoemmen & Langou 2012, "Communication-optimal parallel and sequential
    QR and LU factorizations"): each run of samples (a residual block, or
    the whole batch) whose length divides by s is cut into s equal slices
    of consecutive samples, each slice is factored on its own,
    J̄_j = Q_j R_j, and R is the triangular factor of the stacked R_j (and
    of the rows of the runs left whole). Then J̄ = diag(Q_j)·[R_1; …; R_s]
    and RᵀR = Σ_j R_jᵀR_j = J̄ᵀJ̄ still. A slice needs at least P rows
    ((N_s/s)·K ≥ P), else its run is left whole. s = 1 is one QR, as
    before.

    With ``slicing``, the slices are those `ggn_jax.shard_batch` puts on the
    mesh's devices, and each device factors its own inside a
    `jax.shard_map` (one unbatched QR a device); only the s·P×P factors
    are gathered for the last factorisation, not the N·K×P Jacobian.
    Without it, the s slices are one batched QR, wherever XLA puts it.
    (jaxlib's batched QR on the CPU spreads its matrices over the intra-op
    thread pool and waits for them. Several host devices doing that at
    once hung with every pool thread waiting: 4 devices on 2 cores, a
    batch replicated over the mesh, so that each device held all 4
    slices. One QR a device does not wait on the pool. Under ``jax.vmap``
    it is batched again, and a vmapped QR step on several CPU host devices
    can still hang; ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` keeps
    the kernel off the pool, and ran 400 of 400 such steps.) Slices on one
    device cost about 1.0–1.6× one QR (float32, a 2-core x86 CPU;
    BENCHMARKS.md, "A sharded batch of blocks, TSQR and the batch
    fingerprint"), which is why `Primal` slices only a batch that lies on
    a mesh (`batch_slicing`).

    Args:
      jac: per-sample Jacobians J_i, (N, K, P), or a tuple of runs of them
        (N_s, K, P) in the order of the samples.
      shards: s, the number of slices; 1 for one Householder QR of J̄.
      slicing: (mesh, axes) from `batch_slicing`: the mesh (concrete or
        abstract) the batch lies on and the axes its samples are split
        over, whose sizes multiply to s; None for a batched QR of the s
        slices.

    Returns:
      R, upper triangular, (min(NK, P), P) up to the signs of its rows.
    """
    runs = jac if isinstance(jac, tuple) else (jac,)
    n = sum(run.shape[0] for run in runs)
    _, k, p = runs[0].shape
    root = jnp.sqrt(jnp.asarray(n, runs[0].dtype))
    sliced = [shards > 1 and run.shape[0] % shards == 0 and run.shape[0] // shards * k >= p
              for run in runs]
    if not any(sliced):
        return jnp.linalg.qr(join_runs(runs).reshape(-1, p) / root, mode="r")
    rows = []
    for run, slice_it in zip(runs, sliced):
        if not slice_it:
            rows.append(run.reshape(-1, p) / root)
        elif slicing is None:
            local = jnp.linalg.qr(run.reshape(shards, -1, p) / root, mode="r")  # (s, P, P)
            rows.append(local.reshape(-1, p))
        else:
            rows.append(_factor_on_devices(run / root, *slicing))
    return jnp.linalg.qr(jnp.concatenate(rows), mode="r")


def _factor_on_devices(run: jax.Array, mesh: Any, axes: tuple[str, ...]) -> jax.Array:
    """The R_j of each device's own slice of ``run`` (N_s, K, P), its
    samples split over ``axes`` of ``mesh``; stacked, (s·P, P)."""
    p = run.shape[-1]
    spec = PartitionSpec(axes)
    factor = jax.shard_map(
        lambda part: jnp.linalg.qr(part.reshape(-1, p), mode="r")[None],
        mesh=mesh, in_specs=spec, out_specs=spec,
    )
    return factor(run).reshape(-1, p)


def batch_slicing(inputs: Any) -> tuple[int, tuple[Any, tuple[str, ...]] | None]:
    """s and (mesh, axes) for `jacobian_factor`: the devices the batch is
    split over, read from its arrays' types at trace time (`jax.typeof`).

    The types carry the batch's mesh but not (under JAX's default, "auto"
    sharding) how the arrays lie on it. So the axes are the mesh's
    ``batch`` axis (`ggn_jax.sharding.BATCH_AXIS`, as `data_mesh` names
    it) where it has one, else all of its axes, and s is their size;
    (1, None) for arrays on no mesh, so that a batch on one device never
    pays for slices. Axes that are already manual (inside a user's
    ``jax.shard_map`` or ``jax.pmap``, where each device sees only its own
    samples) are not split again. Where this JAX carries no sharding in
    its types (older than ``jax.typeof``, or a leaf whose type has no
    mesh), or has no ``jax.shard_map``, s = 1: one QR, always right,
    gathering J̄ where the batch is split. A wrong s costs time, never
    accuracy: RᵀR is the same for every s. A batch placed on devices only
    by ``jit``'s ``in_shardings`` has no mesh in its type and gets s = 1.
    """
    typeof = getattr(jax, "typeof", None)
    if typeof is None or not hasattr(jax, "shard_map"):
        return 1, None
    best: tuple[int, tuple[Any, tuple[str, ...]] | None] = (1, None)
    for leaf in jax.tree_util.tree_leaves(inputs):
        sharding = getattr(typeof(leaf), "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        if mesh is None:
            return 1, None
        if mesh.empty:
            continue
        manual = set(getattr(mesh, "manual_axes", ()))
        names = [a for a in mesh.axis_names if a not in manual]
        if not names:
            continue
        sizes = dict(mesh.shape)
        axes = (BATCH_AXIS,) if BATCH_AXIS in names else tuple(names)
        size = int(np.prod([sizes[a] for a in axes]))
        if size > best[0]:
            best = (size, (mesh, axes))
    return best


def solve_primal_qr(
    factor: jax.Array, grad: jax.Array, damping: jax.Array, scale: jax.Array | None
) -> jax.Array:
    """δ = −(RᵀR + λD)⁻¹g through the QR factorisation of [R; √(λD)]:
    with that stack's triangular factor S, SᵀS = RᵀR + λD and
    δ = −S⁻¹S⁻ᵀg (two triangular solves).

    Meant for N·K ≥ P. Where P > N·K, G has a null space along which the
    round-off in g grows by 1/λ; `solve_primal`'s floor is the remedy there.

    Args:
      factor: R with RᵀR = G (`jacobian_factor`), (M, P).
      grad: g, (P,).
      damping: λ > 0.
      scale: the diagonal of D (P,), or None for D = I.

    Returns:
      δ, (P,); not finite where S is singular (λD = 0 on G's null space).
    """
    p = grad.shape[0]
    root = jnp.sqrt(damped_diagonal(p, damping, scale)).astype(factor.dtype)
    stacked = jnp.linalg.qr(jnp.concatenate([factor, jnp.diag(root)]), mode="r")
    half = solve_triangular(stacked, grad, trans="T")
    return -solve_triangular(stacked, half)


def uses_qr(local: LocalModel, config: Any) -> bool:
    """Whether `Primal` factors the Jacobian by QR (``primal_factorization``):
    for ``"auto"``, in a dtype narrower than float64, with identity loss
    Hessians (squared error, `Blocks`) and N·K ≥ P, unless a
    ``relative_damping_floor`` was set (a floor is a Cholesky's) or the
    damping rule is ``fixed`` (a λ held tiny on a rank-deficient J̄ gives
    the unfloored QR step no bound). A step then takes about twice the
    time of the Cholesky one (BENCHMARKS.md, "The damping floor in
    float32"); where P > N·K the second factorisation, of the (N·K + P)×P
    stack, would dominate, and G's null space would amplify round-off."""
    choice = config.primal_factorization
    if choice == "cholesky":
        return False
    if local.hessians is not None:
        if choice == "qr":
            raise ValueError(
                "primal_factorization='qr' needs identity loss Hessians (squared error "
                "or Blocks); this loss has Hessians: use 'cholesky' or 'auto'"
            )
        return False
    n = sum(run.shape[0] for run in local.jacobians)
    _, k, p = local.jacobians[0].shape
    if choice == "qr":
        if n * k < p:
            raise ValueError(
                f"primal_factorization='qr' needs N·K ≥ P (here N·K = {n * k} < P = {p}): "
                "round-off along G's null space would grow by 1/λ; use 'cholesky' or 'auto'"
            )
        return True
    return (jnp.finfo(local.jacobians[0].dtype).bits < 64 and n * k >= p
            and config.relative_damping_floor is None and config.damping_rule != "fixed")


class Primal(Solver):
    """G from per-sample Jacobians, then a Cholesky of G + λD; or, where
    `uses_qr`, the QR factor of the Jacobian and one of [R; √(λD)]."""

    name = "primal"
    code = 0

    def cost(self, shape: ProblemShape, config: Any) -> float | None:
        nk = shape.num_samples * shape.num_outputs
        p = shape.num_params
        if p > config.max_dense or nk * p > config.max_jacobian:
            return None
        # Per-sample Jacobians (3K passes a sample), JᵀJ, a Cholesky.
        return 3.0 * shape.num_outputs * shape.forward() + 2.0 * nk * p**2 + p**3 / 3.0

    def prepare(self, problem, config):
        local = local_from_jacobians(problem)
        if uses_qr(local, config):
            factor = jacobian_factor(local.jacobians, *batch_slicing(problem.inputs))
            # diag(G) = diag(RᵀR), the squared column norms of R; G itself
            # is not needed.
            return local._replace(diagonal=jnp.sum(factor * factor, axis=0),
                                  factor=factor), None
        ggn = dense_ggn(local.jacobians, local.hessians)
        return local._replace(ggn=ggn, diagonal=jnp.diag(ggn)), None

    def holds_at_tiny_damping(self, local: LocalModel) -> bool:
        return local.factor is not None  # the QR route; a Cholesky needs the floor

    def takes_relative_floor(self, local: LocalModel) -> bool:
        # The QR step needs no floor on λ, not even under Marquardt scaling
        # (where ggn_step has a trace, Σ diag(G)/D, for one).
        return local.factor is None

    def trace(self, local: LocalModel) -> None:
        # The floor is per parameter, inside the Cholesky (`solve_primal`);
        # the QR solve needs none.
        return None

    def solve(self, problem, config, local: LocalModel, lin, grad, damping, scale, warm_start,
              warm_usable=None):
        if local.factor is not None:
            step = solve_primal_qr(local.factor, grad, damping, scale)
            return step, direct_info(step)
        floor, fallback = config.primal_floors(local.ggn.dtype)
        step = solve_primal(local.ggn, grad, damping, scale, floor, fallback)
        return step, direct_info(step)

    def along(self, problem, local, lin, step):
        return jacobian_along(local, step)
