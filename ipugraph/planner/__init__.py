"""The planner: fusion groups, partition search per op, cost model, the Plan."""
from .fusion import Group, group_nodes
from .partition import Partition, PlanError, search
from .plan import CACHE_STATS, Plan, Step, plan

__all__ = ["Group", "group_nodes", "Partition", "PlanError", "search", "CACHE_STATS", "Plan",
           "Step", "plan"]
