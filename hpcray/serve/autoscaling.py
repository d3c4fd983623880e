"""Autoscaling decisions from ongoing requests, with Ray Serve's delays (no MPI here)."""

from __future__ import annotations

import math

from .config import AutoscalingConfig


class AutoscalingPolicy:
    """Desired replica count: ongoing / target, changed only after the delay has held."""

    def __init__(self, config: AutoscalingConfig):
        self.config = config
        self.pending: int | None = None  # the count wanted, and since when
        self.since = 0.0

    def desired(self, total_ongoing: float) -> int:
        c = self.config
        want = math.ceil(total_ongoing / c.target_ongoing_requests) if total_ongoing > 0 else 0
        return max(c.min_replicas, min(c.max_replicas, want))

    def decide(self, current: int, total_ongoing: float, now: float) -> int:
        """The replica count to have at ``now`` given ``current`` and the load."""
        want = self.desired(total_ongoing)
        if want == current:
            self.pending = None
            return current
        up = want > current
        if self.pending is None or (self.pending > current) != up:
            self.pending, self.since = want, now
        else:
            self.pending = want  # same direction: the delay keeps running
        delay = self.config.upscale_delay_s if up else self.config.downscale_delay_s
        if now - self.since >= delay:
            self.pending = None
            return want
        return current
