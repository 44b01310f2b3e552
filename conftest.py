"""Test session set-up, read before anything imports JAX.

Compile time: the suite's time goes mostly to XLA compiling a few hundred
small programs on a 2-core CPU. The tests check numbers, not speed, so the
CPU backend compiles them with LLVM's cheaper passes (about a quarter less
time per compile here); a setting the caller already put in XLA_FLAGS is
kept. The benchmarks and the README's own programs run at full
optimisation (tests/helpers.py clears XLA_FLAGS for those).

Doctest collection: the adapters' examples need Flax and Equinox, optional
extras; without them that module's doctests are skipped (not failed).
"""

import os

_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_flags = os.environ.get("XLA_FLAGS", "").split()
_names = {flag.split("=")[0] for flag in _flags}
os.environ["XLA_FLAGS"] = " ".join(
    _flags + [flag for flag in _FAST_COMPILE if flag.split("=")[0] not in _names])

collect_ignore = []
try:
    import equinox  # noqa: F401
    import flax.nnx  # noqa: F401
except ImportError:
    collect_ignore.append("ggn_jax/adapters.py")
