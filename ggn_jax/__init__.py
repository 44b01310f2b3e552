"""ggn_jax: neural-network training with the damped generalised Gauss-Newton method.

The public names of the optimiser, one per line; everything else is
internal. The paper's tools are in `ggn_jax.paper`, the benchmark runner in
`ggn_jax.bench` (imported on use: it needs the ``bench`` extra's peers), the
Flax NNX and Equinox adapters in `ggn_jax.adapters` and the derivatives in
x in `ggn_jax.pde` (both imported on use too).
"""

import importlib as _importlib
import warnings as _warnings

from ggn_jax import paper as paper
from ggn_jax.blocks import Block as Block
from ggn_jax.blocks import Blocks as Blocks
from ggn_jax.curvature import ggn_matrix as ggn_matrix
from ggn_jax.curvature import gram_matrix as gram_matrix
from ggn_jax.damping import DAMPING_RULES as DAMPING_RULES
from ggn_jax.fit import FitResult as FitResult
from ggn_jax.fit import StepLog as StepLog
from ggn_jax.fit import fit as fit
from ggn_jax.fit import lower_fit as lower_fit
from ggn_jax.losses import NAMED_LOSSES as NAMED_LOSSES
from ggn_jax.lowest import LowestLoss as LowestLoss
from ggn_jax.options import GGNConfig as GGNConfig
from ggn_jax.sharding import data_mesh as data_mesh
from ggn_jax.sharding import replicate as replicate
from ggn_jax.sharding import shard_batch as shard_batch
from ggn_jax.solvers import SOLVER_NAMES as SOLVER_NAMES
from ggn_jax.solvers import SOLVERS as SOLVERS
from ggn_jax.transform import GGNState as GGNState
from ggn_jax.transform import ggn as ggn

__version__ = "0.2.0"

# The paper's names lived at the top level in 0.1; they stay here as aliases
# of `ggn_jax.paper` for 0.2, with a warning, and go in 0.3.
_MOVED_TO_PAPER = frozenset(paper.__all__)


def __getattr__(name: str):
    if name in _MOVED_TO_PAPER:
        _warnings.warn(
            f"ggn_jax.{name} has moved to ggn_jax.paper.{name}; the old name goes "
            "in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(paper, name)
    if name in ("bench", "adapters", "pde"):  # imported on first use, as
        return _importlib.import_module(f"ggn_jax.{name}")  # ggn_jax.pde.laplacian
    raise AttributeError(f"module 'ggn_jax' has no attribute {name!r}")


__all__ = [
    "DAMPING_RULES",
    "NAMED_LOSSES",
    "SOLVERS",
    "SOLVER_NAMES",
    "Block",
    "Blocks",
    "FitResult",
    "GGNConfig",
    "GGNState",
    "LowestLoss",
    "StepLog",
    "data_mesh",
    "fit",
    "ggn",
    "ggn_matrix",
    "gram_matrix",
    "lower_fit",
    "paper",
    "replicate",
    "shard_batch",
]
