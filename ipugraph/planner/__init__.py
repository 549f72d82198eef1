"""The planner: fusion groups, partition search per op, cost model, tile mappings, memory per
tile, the Plan."""
from .fusion import Group, group_nodes
from .partition import Partition, PlanError, candidates
from .plan import CACHE_STATS, Plan, plan
from .regions import Region, TileMapping
from .step import Step

__all__ = ["Group", "group_nodes", "Partition", "PlanError", "candidates", "CACHE_STATS", "Plan",
           "Step", "plan", "Region", "TileMapping"]
