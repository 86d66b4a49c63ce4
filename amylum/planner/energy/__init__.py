"""Energy planning: the iteration's computation DAG, per-clock profiles, the time–energy
frontier (Phillips–Dessouky iterative min cut, as Perseus) and GPU frequency plans.

Pure planning code: no torch, no GPU. See docs/energy.md.
"""

from .actions import dag_from_actions
from .dag import ComputationDAG, DAGError, Node, Option
from .frontier import Frontier, FrontierError, FrontierPoint, solve_frontier
from .plan import FrequencyPlan, PlanError, fastest, for_straggler, pick, plan_from_point, sample
from .profiles import AnalyticGPU, FrequencyProfile, ProfileError, analytic, from_csv, from_measurements

__all__ = [
    "AnalyticGPU", "ComputationDAG", "DAGError", "FrequencyPlan", "FrequencyProfile", "Frontier", "FrontierError",
    "FrontierPoint", "Node", "Option", "PlanError", "ProfileError", "analytic", "dag_from_actions", "fastest",
    "for_straggler", "from_csv", "from_measurements", "pick", "plan_from_point", "sample", "solve_frontier",
]
