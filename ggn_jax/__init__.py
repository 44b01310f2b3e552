"""ggn_jax: neural-network training with the damped generalised Gauss-Newton method.

The public names, one per line; everything else is internal.
"""

from ggn_jax.analysis import ConditionReport as ConditionReport
from ggn_jax.analysis import ConvergenceOrder as ConvergenceOrder
from ggn_jax.analysis import CriticalPointReport as CriticalPointReport
from ggn_jax.analysis import convergence_order as convergence_order
from ggn_jax.analysis import critical_point as critical_point
from ggn_jax.analysis import exact_learning_conditions as exact_learning_conditions
from ggn_jax.blocks import Block as Block
from ggn_jax.blocks import Blocks as Blocks
from ggn_jax.curvature import ggn_matrix as ggn_matrix
from ggn_jax.curvature import gram_matrix as gram_matrix
from ggn_jax.damping import DAMPING_RULES as DAMPING_RULES
from ggn_jax.data import Dataset as Dataset
from ggn_jax.data import four_region as four_region
from ggn_jax.data import four_region_labels as four_region_labels
from ggn_jax.data import teacher_student as teacher_student
from ggn_jax.fit import FitResult as FitResult
from ggn_jax.fit import StepLog as StepLog
from ggn_jax.fit import fit as fit
from ggn_jax.losses import NAMED_LOSSES as NAMED_LOSSES
from ggn_jax.models import ACTIVATIONS as ACTIVATIONS
from ggn_jax.models import MLP as MLP
from ggn_jax.models import Activation as Activation
from ggn_jax.models import bent_identity as bent_identity
from ggn_jax.models import mlp as mlp
from ggn_jax.sharding import data_mesh as data_mesh
from ggn_jax.sharding import replicate as replicate
from ggn_jax.sharding import shard_batch as shard_batch
from ggn_jax.solvers import SOLVER_NAMES as SOLVER_NAMES
from ggn_jax.solvers import SOLVERS as SOLVERS
from ggn_jax.transform import GGNConfig as GGNConfig
from ggn_jax.transform import GGNState as GGNState
from ggn_jax.transform import ggn as ggn

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "DAMPING_RULES",
    "MLP",
    "NAMED_LOSSES",
    "SOLVERS",
    "SOLVER_NAMES",
    "StepLog",
    "Activation",
    "Block",
    "Blocks",
    "ConditionReport",
    "ConvergenceOrder",
    "CriticalPointReport",
    "Dataset",
    "FitResult",
    "GGNConfig",
    "GGNState",
    "bent_identity",
    "convergence_order",
    "critical_point",
    "data_mesh",
    "exact_learning_conditions",
    "fit",
    "four_region",
    "four_region_labels",
    "ggn",
    "ggn_matrix",
    "gram_matrix",
    "mlp",
    "replicate",
    "shard_batch",
    "teacher_student",
]
