"""The batch sharded over 4 host devices gives the one-device step.

XLA fixes the number of host devices when it starts, so the comparison runs
in a fresh process with ``--xla_force_host_platform_device_count=4``.
"""

import json

import jax
import jax.numpy as jnp
import pytest
from helpers import start_sharded_steps

import ggn_jax


@pytest.fixture(scope="module")
def sharded_results():
    # Started by conftest.py when this module was collected.
    out, err = start_sharded_steps().communicate(timeout=600)
    assert start_sharded_steps().returncode == 0, err[-3000:]
    return json.loads(out)


def test_the_batch_is_spread_over_four_devices(sharded_results):
    assert sharded_results["devices"] == 4 and sharded_results["batch_devices"] == 4


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_sharded_steps_equal_one_device_steps(sharded_results, solver, dtype, tol):
    assert sharded_results[f"fit {solver} {dtype}"] < tol
    assert sharded_results[f"ggn {solver} {dtype}"] < tol
    assert sharded_results[f"ggn None {solver} {dtype}"] < tol  # update(None, ...)
    one, four = sharded_results[f"loss {solver} {dtype}"]
    assert four == pytest.approx(one, rel=tol)


def test_sharded_float32_qr_step_gathers_no_jacobian(sharded_results):
    """The float32 QR ``primal`` step (N·K = 768 ≥ P = 67) on 4 devices
    factors the 4 slices first, each device its own 192 rows (TSQR,
    `jacobian_factor`), and a batch on one device all of J̄ at once; the
    two steps agree (1.0e-5 measured after one step: the unfloored QR step
    carries κ·eps). So do the steps on a batch replicated over the 4
    devices and on one split over "data" of a 2 × 2 (data, model) mesh,
    which hung with a batched QR of the slices. The sharded program gathers
    only the four slices' P×P factors (4·67² entries), where one QR of the
    whole J̄ gathers all N·K·P = 51 456."""
    r = sharded_results
    assert r["qr first factorisation sharded"] == [192, 67]
    assert r["qr first factorisation plain"] == [768, 67]
    assert r["fit qr float32"] < 1e-4
    assert r["fit qr replicated batch"] < 1e-4 and r["fit qr data x model"] < 1e-4
    # Inside pmap (a manual axis) no second split: each device's step is
    # the one-device step on its own samples (it did not compile when the
    # manual axis was split again).
    assert r["qr inside pmap"] < 1e-5
    one, four = r["qr loss"]
    assert four == pytest.approx(one, rel=1e-4)
    assert r["qr whole largest gather"] == r["qr jacobian entries"] == 256 * 3 * 67
    assert r["qr largest gather"] == 4 * 67 * 67


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-3)])
def test_sharded_blocks_take_the_one_device_steps_and_gather_no_jacobian(
        sharded_results, dtype, tol):
    """A 1-D Poisson problem in two residual blocks (256 interior and 8
    boundary samples, P = 25) on 4 devices: ``primal`` takes the one-device
    steps (Cholesky in float64; QR in float32, TSQR against one QR on one
    device, measured 1.9e-5 apart after 4 steps), and no block's
    per-sample Jacobians are gathered whole
    (256·25 = 6400 entries for the interior; joining the blocks' Jacobians
    gathered them): float64 gathers at most N·K-sized vectors, float32 the
    interior's four P×P slice factors (TSQR)."""
    r = sharded_results
    assert r[f"blocks fit {dtype}"] < tol
    one, four = r[f"blocks loss {dtype}"]
    assert four == pytest.approx(one, rel=tol)
    assert r["blocks interior jacobian entries"] == 256 * 25
    if dtype == "float64":
        assert r["blocks largest gather float64"] <= 256
        # The dual (which joins the blocks) and CG take the one-device steps too.
        assert r["blocks fit dual float64"] < tol and r["blocks fit cg float64"] < tol
    else:
        assert r["blocks largest gather float32"] == 4 * 25 * 25


def test_the_fingerprint_of_a_sharded_batch_gathers_nothing(sharded_results):
    """`batch_fingerprint` of 8192 × 8 inputs and 8192 labels over 4
    devices: the one-device value to 1e-12, with no all-gather at all
    (each device reduces its own samples; the flat-index weights it had
    before gathered the whole batch)."""
    one, four = sharded_results["fingerprint"]
    assert four == pytest.approx(one, rel=1e-12)
    assert sharded_results["fingerprint largest gather"] == 0


def test_tsqr_slices_follow_the_batchs_mesh(sharded_results):
    """s for TSQR (`batch_slicing`, read in a trace): 1 for a batch on one
    device (with a None and a float leaf), the mesh's size for
    `data_mesh` over 4 and over 2 devices, and the ``batch`` axis's 2 on a
    2 × 2 mesh of axes (batch, model)."""
    assert sharded_results["slices"] == {
        "one device": 1, "data_mesh of 4": 4, "data_mesh of 2": 2, "batch x model mesh": 2}
    # A mesh with no ``batch`` axis is split over all of its axes.
    assert sharded_results["slicing axes without a batch axis"] == ["data", "model"]


def test_a_batch_that_does_not_divide_is_named(sharded_results):
    assert "batch[0] has 6 samples, not a multiple of the 4 devices" in sharded_results["error"]


def test_one_device_mesh_helpers():
    mesh = ggn_jax.data_mesh(jax.devices()[:1])
    batch = ggn_jax.shard_batch((jnp.ones((3, 2)), jnp.ones((3,))), mesh)
    assert batch[0].shape == (3, 2)
    with pytest.raises(ValueError, match="has no axis 'model'"):
        ggn_jax.shard_batch(batch, mesh, axis="model")
    with pytest.raises(ValueError, match=r"batch\[1\] is a scalar"):
        ggn_jax.shard_batch((jnp.ones((3, 2)), jnp.float32(1.0)), mesh)
    params = ggn_jax.replicate({"w": jnp.ones(2)}, mesh)
    assert params["w"].sharding.is_fully_replicated
    # Misuse a review met: one device for a list, a list for a mesh, and
    # replicate's arguments swapped (were "'Device' object is not
    # iterable" and AttributeErrors).
    with pytest.raises(TypeError, match=r"got one device .*; pass \[device\]"):
        ggn_jax.data_mesh(jax.devices()[0])
    with pytest.raises(TypeError, match="devices must be jax.Device objects"):
        ggn_jax.data_mesh(["cpu:0"])
    with pytest.raises(TypeError, match="devices is already a Mesh"):
        ggn_jax.data_mesh(mesh)
    with pytest.raises(TypeError, match=r"shard_batch\(batch, mesh\): mesh must be a "
                                        r"jax.sharding.Mesh .*got list"):
        ggn_jax.shard_batch(batch, jax.devices())
    with pytest.raises(TypeError, match=r"replicate\(tree, mesh\): mesh must be a "
                                        r"jax.sharding.Mesh .*got dict"):
        ggn_jax.replicate(mesh, {"w": jnp.ones(2)})
