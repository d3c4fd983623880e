"""Piecewise-linear schedules over sampled env steps ([(step, value), ...])."""

from __future__ import annotations

import numpy as np


def piecewise(schedule: float | list[tuple[int, float]], t: int) -> float:
    if isinstance(schedule, (int, float)):
        return float(schedule)
    points = sorted(schedule)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return float(np.interp(t, xs, ys))
