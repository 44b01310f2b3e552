"""Doctest collection: the adapters' examples need Flax and Equinox, optional
extras; without them that module's doctests are skipped (not failed)."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("flax") is None or importlib.util.find_spec("equinox") is None:
    collect_ignore.append("ggn_jax/adapters.py")
