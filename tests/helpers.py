"""Shared test helpers: small random MLPs, problems and dtype tolerances."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ggn_jax.losses import bind_loss

# x64 switched on or off inside a `with`: ``jax.enable_x64`` from JAX 0.8,
# ``jax.experimental.enable_x64`` before (the suite runs on both).
enable_x64 = getattr(jax, "enable_x64", None)
if enable_x64 is None:  # pragma: no cover - JAX < 0.8
    from jax.experimental import enable_x64


def mlp_init(key, sizes, dtype=jnp.float64):
    """A list of (W, b) with N(0, 1/fan_in) weights and small random biases."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, k_w, k_b = jax.random.split(key, 3)
        w = jax.random.normal(k_w, (fan_in, fan_out), dtype) / float(np.sqrt(fan_in))
        b = 0.1 * jax.random.normal(k_b, (fan_out,), dtype)
        params.append((w, b))
    return params


def mlp_apply(params, x, activation=jnp.tanh):
    for w, b in params[:-1]:
        x = activation(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def random_batch(key, n, d_in, k_out, dtype=jnp.float64):
    k_x, k_y = jax.random.split(key)
    x = jax.random.normal(k_x, (n, d_in), dtype)
    y = jax.random.normal(k_y, (n, k_out), dtype)
    return x, y


def targets_for(loss, key, n, k, dtype=jnp.float64):
    """Targets of the right kind for each named loss (or a callable)."""
    if loss == "softmax_cross_entropy":
        return jax.random.randint(key, (n,), 0, k)
    if loss == "sigmoid_binary_cross_entropy":
        return jax.random.bernoulli(key, 0.5, (n, k)).astype(dtype)
    return jax.random.normal(key, (n, k), dtype)


def log_cosh(o, y):
    """A callable per-sample loss, convex in the outputs, with a non-constant Hessian."""
    r = o - y
    return jnp.sum(jnp.logaddexp(r, -r) - jnp.log(2.0))


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def dtype_tol(dtype, factor=1.0):
    """A tolerance derived from the dtype: factor·√eps."""
    return factor * float(np.sqrt(np.finfo(dtype).eps))


def small_problem(loss, seed, n=6, sizes=(3, 5, 4)):
    """A random tanh MLP and a batch with targets of the loss's kind."""
    key = jax.random.PRNGKey(seed)
    k_p, k_x, k_y = jax.random.split(key, 3)
    params = mlp_init(k_p, list(sizes))
    x = jax.random.normal(k_x, (n, sizes[0]))
    y = targets_for(loss, k_y, n, sizes[-1])
    return params, (x, y)


def reference_ggn(loss, params, batch):
    """J_fullᵀ H_full J_full / N from jacfwd of the whole batch and jax.hessian.

    Independent of the library's per-sample code: the Jacobian is of all NK
    outputs at once and the Hessian is of the summed loss in all NK outputs.
    Returns (G, J_full).
    """
    x, y = batch
    theta, unravel = ravel_pytree(params)
    outputs = mlp_apply(params, x)
    n, k = outputs.shape
    j_full = jax.jacfwd(lambda th: mlp_apply(unravel(th), x).reshape(-1))(theta)
    integer = jnp.issubdtype(y.dtype, jnp.integer)
    bound = bind_loss(loss, (k,), target_sample_shape=y.shape[1:], integer_targets=integer)

    def summed(o_flat):
        o = o_flat.reshape(n, k)
        return sum(bound.value(o[i], y[i]) for i in range(n))

    h_full = jax.hessian(summed)(outputs.reshape(-1))
    return j_full.T @ h_full @ j_full / n, j_full



def softmax_dense_step(apply_fn, params, inputs, labels, damping, curvature_samples=None):
    """−(G + λI)⁻¹b for softmax cross-entropy: b from jax.grad on the whole
    batch, G from jacfwd of the whole batch's outputs, its first
    ``curvature_samples`` rows (all by default), and diag(p) − ppᵀ written
    out. Independent of the library's per-sample code."""
    import optax

    theta, unravel = ravel_pytree(params)

    def outputs(th):
        return apply_fn(unravel(th), inputs)

    def mean_loss(th):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs(th), labels))

    m = curvature_samples
    jac = jax.jacfwd(outputs)(theta)[:m]  # (m, K, P): the whole batch's rows
    p = jax.nn.softmax(outputs(theta))[:m]
    hessians = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
    g_dense = np.asarray(jnp.einsum("nkp,nkl,nlq->pq", jac, hessians, jac)) / jac.shape[0]
    return -np.linalg.solve(g_dense + damping * np.eye(theta.size),
                            np.asarray(jax.grad(mean_loss)(theta)))


def compile_cache_settings(process: str) -> dict[str, str | int]:
    """The JAX settings (as environment variables) that give ``process`` its
    own folder of the session's compile cache (../conftest.py); none when
    the session has no cache of its own."""
    root = os.environ.get("GGN_JAX_TEST_COMPILE_CACHE")
    if not root:
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": os.path.join(root, process),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": 0,
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": 0}


SHARDED_SCRIPT = os.path.join(os.path.dirname(__file__), "sharded_steps.py")
_BACKGROUND: dict[str, subprocess.Popen] = {}


def start_sharded_steps() -> subprocess.Popen:
    """The sharded_steps.py process on 4 host devices, started once (its
    stdout is JSON); conftest.py starts it when test_sharding is collected."""
    if "sharded" not in _BACKGROUND:
        flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
        env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
        env.update({k: str(v) for k, v in compile_cache_settings("sharded").items()})
        _BACKGROUND["sharded"] = subprocess.Popen(
            [sys.executable, SHARDED_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
    return _BACKGROUND["sharded"]


README = os.path.join(os.path.dirname(__file__), "..", "README.md")
CONTINUES = "# continues the block above"


def readme_programs() -> list[tuple[int, str]]:
    """The README's Python blocks as programs: (line of the block, source).

    A block whose first line is ``CONTINUES`` is appended to the program of
    the block before it, and that program is then not listed on its own (the
    longer one runs it too)."""
    with open(README) as f:
        lines = f.read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            indent = len(lines[i]) - len(lines[i].lstrip())
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            body = [line[indent:] for line in lines[i + 1:end]]
            blocks.append((i + 1, "\n".join(body) + "\n"))
            i = end
        i += 1
    programs: list[tuple[int, str]] = []
    for line, body in blocks:
        if body.startswith(CONTINUES):
            if not programs:
                raise ValueError(f"README line {line}: the first block continues none")
            _, before = programs.pop()
            body = before + "\n" + body
        programs.append((line, body))
    return programs


def start_readme_programs() -> dict[int, subprocess.Popen]:
    """Every README program in a fresh process of its own, in a scratch
    directory, all at once (started once per session; conftest.py starts
    them when test_readme is collected). Keyed by the README line.

    Of the session's JAX settings only the compile flags of conftest.py
    reach them (x64 and the compile cache are set in the test process
    itself, tests/conftest.py): they check the figures a block prints, not
    its speed, and compile in about half the CPU time with those flags
    (122 s → 66 s for all the blocks, 2026-12-07). A block that sets
    XLA_FLAGS itself (the sharding one) gets none."""
    if "readme" not in _BACKGROUND_GROUPS:
        scratch = tempfile.mkdtemp(prefix="ggn_jax_readme_")
        atexit.register(shutil.rmtree, scratch, True)
        unset = ("JAX_ENABLE_X64",)
        env = {k: v for k, v in os.environ.items() if k not in unset}
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        group = {}
        for line, source in readme_programs():
            cwd = os.path.join(scratch, f"block_{line}")
            os.makedirs(cwd)
            path = os.path.join(cwd, "block.py")
            with open(path, "w") as f:
                f.write(source)
            # Output to files, not pipes: nobody reads a pipe until the test
            # runs, and a full one would stall the program.
            with open(os.path.join(cwd, "stdout"), "w") as out, \
                    open(os.path.join(cwd, "stderr"), "w") as err:
                own_flags = "XLA_FLAGS" in source
                group[line] = subprocess.Popen(
                    [sys.executable, path], cwd=cwd, stdout=out, stderr=err,
                    env={k: v for k, v in env.items() if not (own_flags and k == "XLA_FLAGS")})
        _BACKGROUND_GROUPS["readme"] = group
    return _BACKGROUND_GROUPS["readme"]


def readme_program_output(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Waits for a process from `start_readme_programs`: (exit status,
    stdout, stderr)."""
    returncode = process.wait(timeout=timeout)
    cwd = os.path.dirname(process.args[1])
    with open(os.path.join(cwd, "stdout")) as out, open(os.path.join(cwd, "stderr")) as err:
        return returncode, out.read(), err.read()


_BACKGROUND_GROUPS: dict[str, dict[int, subprocess.Popen]] = {}


def background_processes() -> list[subprocess.Popen]:
    processes = list(_BACKGROUND.values())
    for group in _BACKGROUND_GROUPS.values():
        processes += list(group.values())
    return processes


def jit_update(tx):
    """``tx.update`` as one jitted program, called like ``tx.update``.

    Eager calls dispatch and compile op by op; one program compiles in
    about a third of the time for the ggn step (and runs the same maths).
    """
    step = jax.jit(lambda g, s, p, b: tx.update(g, s, p, batch=b))
    return lambda g, s, p, batch=None: step(g, s, p, batch)


@contextlib.contextmanager
def count_lowerings():
    """A list that gains one entry for each program JAX lowers to MLIR
    inside the ``with`` (an eager op counts as one program): compiles that
    the persistent cache serves are still lowered, so they count too."""
    seen: list[float] = []
    active = [True]

    def listen(event, duration, **_):
        if active[0] and event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        active[0] = False
        # (an older JAX may have no way to unregister one listener)
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:
            unregister(listen)


def nested_jaxprs(params: dict) -> list:
    """The jaxprs an equation's params hold (jit, cond branches, scan, …),
    closed ones opened. What ``jax.extend.core.jaxprs_in_params`` returns,
    which JAX has only from 0.10: the suite runs on older JAX too."""
    found = []
    for param in params.values():
        for inner in param if isinstance(param, (tuple, list)) else (param,):
            inner = getattr(inner, "jaxpr", inner)
            if hasattr(inner, "eqns"):
                found.append(inner)
    return found


def qr_operand_shapes(jaxpr) -> list[tuple[int, ...]]:
    """The operand shapes of the QR factorisations in a jaxpr, in order,
    searched through the jaxprs nested in its equations (jit, cond, …)."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.params.get("name") == "qr":
            shapes.append(eqn.invars[0].aval.shape)
            continue
        for inner in nested_jaxprs(eqn.params):
            shapes.extend(qr_operand_shapes(inner))
    return shapes


def rk4_path(rhs, start, h, length):
    """y(0), y(h), …, y(length·h) of y′ = rhs(y) by classical RK4 steps in
    one lax.scan: a model whose samples (step indices) share the work."""

    def step(y, _):
        k1 = rhs(y)
        k2 = rhs(y + 0.5 * h * k1)
        k3 = rhs(y + 0.5 * h * k2)
        k4 = rhs(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y, y

    _, path = jax.lax.scan(step, start, None, length=length)
    return jnp.concatenate([start[None], path])
