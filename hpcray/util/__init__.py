"""Utilities with Ray's names: ActorPool, placement groups, scheduling strategies, Queue."""

from .actor_pool import ActorPool
from .named_actors import list_named_actors
from .placement_group import (
                              PlacementGroup,
                              get_current_placement_group,
                              get_placement_group,
                              placement_group,
                              remove_placement_group,
)
from .scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

__all__ = [
                              "ActorPool",
                              "NodeAffinitySchedulingStrategy",
                              "PlacementGroup",
                              "PlacementGroupSchedulingStrategy",
                              "get_current_placement_group",
                              "get_placement_group",
                              "list_named_actors",
                              "placement_group",
                              "remove_placement_group",
]
