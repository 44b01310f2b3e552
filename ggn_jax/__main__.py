"""``python -m ggn_jax``: the same as the ``ggn-jax`` command."""

import sys

from ggn_jax.cli import main

sys.exit(main())
