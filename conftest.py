"""Doctest collection: the adapters' examples need Flax and Equinox, optional
extras; without them that module's doctests are skipped (not failed)."""

collect_ignore = []
try:
    import equinox  # noqa: F401
    import flax.nnx  # noqa: F401
except ImportError:
    collect_ignore.append("ggn_jax/adapters.py")
