"""Test configuration: float64 on, as the reference comparisons need it.

Tests of float32 behaviour create float32 arrays explicitly.
"""

import jax

jax.config.update("jax_enable_x64", True)
