"""ggn_jax: neural-network training with the damped generalised Gauss-Newton method.

The public names, one per line; everything else is internal.
"""

from ggn_jax.curvature import ggn_matrix as ggn_matrix
from ggn_jax.curvature import gram_matrix as gram_matrix
from ggn_jax.damping import DAMPING_RULES as DAMPING_RULES
from ggn_jax.fit import FitResult as FitResult
from ggn_jax.fit import fit as fit
from ggn_jax.losses import NAMED_LOSSES as NAMED_LOSSES
from ggn_jax.solvers import SOLVER_NAMES as SOLVER_NAMES
from ggn_jax.solvers import SOLVERS as SOLVERS
from ggn_jax.transform import GGNConfig as GGNConfig
from ggn_jax.transform import GGNState as GGNState
from ggn_jax.transform import ggn as ggn

__version__ = "0.1.0"

__all__ = [
    "DAMPING_RULES",
    "FitResult",
    "GGNConfig",
    "GGNState",
    "NAMED_LOSSES",
    "SOLVERS",
    "SOLVER_NAMES",
    "fit",
    "ggn",
    "ggn_matrix",
    "gram_matrix",
]
