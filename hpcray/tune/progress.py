"""The driver's status table: trials by state, the best so far, elapsed time."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from .storage import flatten
from .trial import STATES, Trial

_MAX_ROWS = 20


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def render(trials: list[Trial], elapsed: float, metric: str | None, mode: str | None,
           max_rows: int = _MAX_ROWS, title: str = "Trial status") -> str:
    """The table as text: a header line, the best trial, then up to max_rows trials."""
    counts = Counter(t.status for t in trials)
    states = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
    header = (f"== {title}: {len(trials)} trials ({states or 'none yet'}) | "
              f"elapsed {elapsed:.1f} s ==")
    lines = [header]
    best = best_trial(trials, metric, mode)
    if best is not None:
        lines.append(f"Best so far: {best.trial_id} {metric}={_fmt(best.last_result[metric])} "
                     f"config={flatten(best.config)}")
    keys = sorted({k for t in trials for k in flatten(t.config)})[:6]
    cols = ["trial", "status", *keys, "iter", "total s"] + ([metric] if metric else [])
    shown = sorted(trials, key=lambda t: (t.status != "RUNNING", t.status == "TERMINATED",
                                          t.index))[:max_rows]
    rows = []
    for t in shown:
        flat = flatten(t.config)
        rows.append([t.trial_id, t.status, *(_fmt(flat.get(k, "")) for k in keys),
                     str(t.iteration), f"{t.time_total_s:.1f}"]
                    + ([_fmt(t.last_result.get(metric, ""))] if metric else []))
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    if len(trials) > len(shown):
        lines.append(f"... {len(trials) - len(shown)} more trials")
    return "\n".join(lines)


def best_trial(trials: list[Trial], metric: str | None, mode: str | None) -> Trial | None:
    if not metric or not mode:
        return None
    scored = [t for t in trials if isinstance(t.last_result.get(metric), (int, float))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda t: t.last_result[metric])


class ProgressReporter:
    """Redraws the table in place on a terminal at most every interval_s; silent otherwise
    unless verbose >= 2 (then it prints the table every interval_s)."""

    def __init__(self, verbose: int = 1, interval_s: float = 1.0, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.interval_s = interval_s
        is_tty = getattr(self.stream, "isatty", lambda: False)()
        self.live = verbose >= 2 or (verbose >= 1 and is_tty)
        self.in_place = is_tty
        self._last = 0.0
        self._lines = 0

    def update(self, trials: list[Trial], elapsed: float, metric: str | None,
               mode: str | None, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        text = render(trials, elapsed, metric, mode)
        if self.in_place and self._lines:
            self.stream.write(f"\x1b[{self._lines}F\x1b[J")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._lines = text.count("\n") + 1

    def summary(self, trials: list[Trial], elapsed: float, metric: str | None,
                mode: str | None) -> None:
        if self.verbose < 1:
            return
        if self.in_place and self._lines:
            self.stream.write(f"\x1b[{self._lines}F\x1b[J")
        self.stream.write(render(trials, elapsed, metric, mode, max_rows=50,
                                 title="Tune finished") + "\n")
        self.stream.flush()
        self._lines = 0
