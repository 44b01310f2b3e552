"""Test session set-up, read before anything imports JAX.

Compile time: the suite's time goes mostly to XLA compiling a few hundred
small programs on a 2-core CPU. The tests check numbers, not speed, so the
CPU backend compiles them with LLVM's cheaper passes (about a quarter less
time per compile) and with its older loop emitters instead of the MLIR
fusion emitters (test_solvers and test_damping: 130 s → 75 s on the 2-core
CI machine, 2026-11-29). A setting the caller already put in XLA_FLAGS is
kept. XLA aborts the process on a flag it does not know, so the flags are
first tried in a short child process and left out if this jaxlib refuses
them. The README's programs compile with them too, all but the one that
sets XLA_FLAGS itself (tests/helpers.py); the benchmarks, run outside the
suite, compile at full optimisation.

Compile cache: many tests compile a program that another test compiled
already, the same step on the same shapes from a transformation built
anew. JAX's persistent compilation cache compiles each such program once:
about a tenth of the compile time (test_damping and test_fit: 87 s of
compiling → 77 s with the cache's reads and writes, 2026-12-07).
Its directory is a scratch one of this session (removed at its end, so no
run reads another's), with a folder per process that compiles tests (the
xdist workers, tests/conftest.py; the sharding process, tests/helpers.py),
so that no process reads an entry another is still writing. Other child
processes get no cache: what they check is what a user's fresh process
does. A cache directory the caller set (JAX_COMPILATION_CACHE_DIR) is
used instead, as is.

Doctest collection: the adapters' examples need Flax and Equinox, optional
extras; without them that module's doctests are skipped (not failed).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                 "--xla_cpu_use_fusion_emitters=false")


def _accepted(flags: str) -> bool:
    """Whether this jaxlib starts with these XLA_FLAGS (an unknown flag is fatal)."""
    probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          timeout=120).returncode == 0


_flags = os.environ.get("XLA_FLAGS", "").split()
_names = {flag.split("=")[0] for flag in _flags}
_added = " ".join(_flags + [f for f in _FAST_COMPILE if f.split("=")[0] not in _names])
if _added != " ".join(_flags) and _accepted(_added):
    os.environ["XLA_FLAGS"] = _added

# Read by tests/conftest.py and tests/helpers.py; the xdist workers inherit it.
COMPILE_CACHE = "GGN_JAX_TEST_COMPILE_CACHE"
if COMPILE_CACHE not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ[COMPILE_CACHE] = tempfile.mkdtemp(prefix="ggn_jax_test_compile_cache_")
    atexit.register(shutil.rmtree, os.environ[COMPILE_CACHE], True)

collect_ignore = []
try:
    import equinox  # noqa: F401
    import flax.nnx  # noqa: F401
except ImportError:
    collect_ignore.append("ggn_jax/adapters.py")
