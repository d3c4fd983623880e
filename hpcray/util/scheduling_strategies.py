"""Scheduling strategies, with Ray's names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PlacementGroupSchedulingStrategy:
    """Run inside a placement group's bundle (any bundle when the index is -1)."""

    placement_group: Any
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None


@dataclass
class NodeAffinitySchedulingStrategy:
    """Run on the node with this id (``hpcray.nodes()[i]["NodeID"]``); soft falls back elsewhere."""

    node_id: str
    soft: bool = False
