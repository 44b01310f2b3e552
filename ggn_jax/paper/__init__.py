"""The paper's tools: Shen (CVPR 2018, arXiv 1611.05827) made checkable.

* `analysis`: the sufficient conditions for exact learning, critical-point
  classification (Hessian against GGN), the empirical convergence order;
* `experiments`: the four-region demo and the width landscape;
* `models`: small MLPs with the paper's activations (bent identity, …);
* `data`: the generated data sets (four-region, teacher–student).

The optimiser itself (`ggn_jax.ggn`, `ggn_jax.fit`) does not depend on
any of this. ``paper_demo`` and ``width_landscape`` (what ``ggn-jax demo``
runs) are importable from here too.
"""

from ggn_jax.paper.analysis import ConditionReport as ConditionReport
from ggn_jax.paper.analysis import ConvergenceOrder as ConvergenceOrder
from ggn_jax.paper.analysis import CriticalPointReport as CriticalPointReport
from ggn_jax.paper.analysis import convergence_order as convergence_order
from ggn_jax.paper.analysis import critical_point as critical_point
from ggn_jax.paper.analysis import (
    exact_learning_conditions as exact_learning_conditions,
)
from ggn_jax.paper.data import Dataset as Dataset
from ggn_jax.paper.data import four_region as four_region
from ggn_jax.paper.data import four_region_labels as four_region_labels
from ggn_jax.paper.data import teacher_student as teacher_student
from ggn_jax.paper.experiments import paper_demo as paper_demo
from ggn_jax.paper.experiments import width_landscape as width_landscape
from ggn_jax.paper.models import ACTIVATIONS as ACTIVATIONS
from ggn_jax.paper.models import MLP as MLP
from ggn_jax.paper.models import Activation as Activation
from ggn_jax.paper.models import bent_identity as bent_identity
from ggn_jax.paper.models import mlp as mlp

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "Activation",
    "ConditionReport",
    "ConvergenceOrder",
    "CriticalPointReport",
    "Dataset",
    "bent_identity",
    "convergence_order",
    "critical_point",
    "exact_learning_conditions",
    "four_region",
    "four_region_labels",
    "mlp",
    "teacher_student",
]
