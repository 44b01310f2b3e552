"""Data-parallel GGN steps on JAX's own sharding.

The batch axis is split over the devices of a one-axis `jax.sharding.Mesh`
with a `NamedSharding`; parameters and optimiser state are replicated.
Nothing else changes: `ggn` and `fit` are jitted, and XLA's SPMD partitioner
turns every sum over samples (the gradient, the GGN-vector products JᵀHJv,
the P×P matrix G, the loss) into per-device partial sums and an
all-reduce. The step therefore equals the one-device step up to the order
of floating-point additions. Two solves are not such sums:

- The ``dual`` solve's N·K×N·K system couples every pair of samples, and
  every device factors all of it.
- The float32 ``primal`` step by QR (``primal_factorization``, taken by
  default for squared error in float32 where N·K ≥ P) factors the N·K×P
  Jacobian. On a batch split along samples over s devices (the mesh's
  ``batch`` axis, or the whole mesh if it has none), each device factors
  its own slice of samples first, and then the s stacked P×P factors are
  factored (a tall-skinny QR,
  `ggn_jax.solvers.primal.jacobian_factor`). XLA then gathers s·P²
  numbers, not the Jacobian. The step differs from the one-device QR's by
  round-off (2e-6 relative on a float32 PINN). This holds for each run of
  samples (the batch, or each residual block) whose N_b divides by s with
  (N_b/s)·K ≥ P (`shard_batch` requires N_b to be a multiple of s). A run
  with fewer rows a device is gathered whole. (On CPU host devices, a
  ``jax.vmap`` of such a step runs jaxlib's batched QR on every device at
  once, which can hang on its thread pool;
  ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` avoids that.)

A problem in residual blocks (`ggn_jax.Blocks`) keeps each block's
per-sample Jacobians apart and sums block by block; only the ``dual``
joins them. To join arrays that are each split over the devices, XLA
first gathers each one whole.

Across hosts, call ``jax.distributed.initialize()`` on every process first;
``jax.devices()`` then lists every host's devices, and a mesh over them
shards the batch across hosts the same way (each process passes the
global batch, or builds it with ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def data_mesh(devices: Sequence[jax.Device] | None = None, axis: str = BATCH_AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: all of ``jax.devices()``).

    Args:
      devices: the devices to split the batch over, in order; default every
        device JAX sees (across hosts after ``jax.distributed.initialize()``).
      axis: the name of the mesh's one axis.

    Returns:
      A `jax.sharding.Mesh` of shape ``{axis: len(devices)}``.

    Raises:
      ValueError: when ``devices`` is empty.

    Example:
      >>> import jax, ggn_jax
      >>> mesh = ggn_jax.data_mesh()
      >>> mesh.axis_names
      ('batch',)
      >>> mesh.devices.size == len(jax.devices())
      True
      >>> dict(ggn_jax.data_mesh(jax.devices()[:1], axis="data").shape)
      {'data': 1}
    """
    if isinstance(devices, Mesh):
        raise TypeError("devices is already a Mesh; pass it on as the mesh, or pass "
                        "list(mesh.devices.flat) for a new one")
    if isinstance(devices, jax.Device):
        raise TypeError(f"devices must be a sequence of devices, got one device ({devices}); "
                        "pass [device]")
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    strays = [d for d in devices if not isinstance(d, jax.Device)]
    if strays:
        raise TypeError(f"devices must be jax.Device objects (from jax.devices()), got "
                        f"{type(strays[0]).__name__}")
    return Mesh(np.asarray(devices), (axis,))


def shard_batch(batch: Any, mesh: Mesh, axis: str | None = None) -> Any:
    """Places every leaf of ``batch`` split along its first (sample) axis.

    Args:
      batch: a pytree of arrays with a common leading dimension N, e.g.
        ``(inputs, targets)``.
      mesh: a mesh from `data_mesh` (or any mesh with the named axis).
      axis: the mesh axis to split over; default the mesh's first.

    Returns:
      The same pytree, each leaf a sharded ``jax.Array``.

    Raises:
      ValueError: when N is not a multiple of the number of devices on the
        axis, or a leaf has no leading axis.

    Example:
      On one device the split is trivial, but the placement is the one a
      multi-device mesh gets: every leaf is partitioned along the batch axis,
      one shard per device.

      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> from jax.sharding import PartitionSpec
      >>> mesh = ggn_jax.data_mesh(jax.devices()[:1])
      >>> x, y = ggn_jax.shard_batch((jnp.ones((4, 2)), jnp.arange(4.0)), mesh)
      >>> x.shape, x.sharding.spec == PartitionSpec("batch")
      ((4, 2), True)
      >>> len(y.addressable_shards) == mesh.size, y.tolist()
      (True, [0.0, 1.0, 2.0, 3.0])
      >>> try:
      ...     ggn_jax.shard_batch(jnp.float32(1.0), mesh)
      ... except ValueError as error:
      ...     print(error)
      batch is a scalar; every batch leaf needs a sample axis
    """
    _check_mesh(mesh, "shard_batch(batch, mesh)")
    axis = mesh.axis_names[0] if axis is None else axis
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r}; its axes: {mesh.axis_names}")
    count = mesh.shape[axis]
    sharding = NamedSharding(mesh, PartitionSpec(axis))

    def place(path, leaf):
        shape = np.shape(leaf)
        name = f"batch{jax.tree_util.keystr(path)}"
        if not shape:
            raise ValueError(f"{name} is a scalar; every batch leaf needs a sample axis")
        if shape[0] % count:
            raise ValueError(
                f"{name} has {shape[0]} samples, not a multiple of the {count} devices on "
                f"mesh axis {axis!r}; trim it to a multiple of {count} or use fewer "
                "devices (a padding sample would enter the mean loss)"
            )
        return jax.device_put(leaf, sharding)

    return jax.tree_util.tree_map_with_path(place, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a full copy of every leaf of ``tree`` on each device of ``mesh``
    (for parameters and optimiser state).

    Args:
      tree: a pytree of arrays, e.g. parameters or a `GGNState`.
      mesh: the mesh the batch is sharded over, from `data_mesh`.

    Returns:
      The same pytree, each leaf a ``jax.Array`` with the values of the
      original, fully replicated over the mesh.

    Example:
      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> mesh = ggn_jax.data_mesh(jax.devices()[:1])
      >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
      >>> placed = ggn_jax.replicate(params, mesh)
      >>> placed["w"].sharding.is_fully_replicated, placed["w"].shape
      (True, (2, 3))
      >>> bool(jnp.array_equal(placed["w"], params["w"]))
      True
    """
    _check_mesh(mesh, "replicate(tree, mesh)")
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _check_mesh(mesh: Any, call: str) -> None:
    """A clear error where the mesh argument is not a mesh (a list of
    devices, or the arguments swapped)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{call}: mesh must be a jax.sharding.Mesh (from "
                        f"ggn_jax.data_mesh), got {type(mesh).__name__}")
