"""What fit() returns: a ResultGrid of Results."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .checkpoint import Checkpoint


class TuneError(RuntimeError):
    """A sweep cannot go on: bad search space, a metric missing from the reports, fail_fast."""


class TrialError(RuntimeError):
    """A trial raised; the message carries its remote traceback."""


@dataclass
class Result:
    """One trial's outcome: last reported metrics, its config, latest checkpoint, directory."""

    metrics: dict
    config: dict
    checkpoint: Checkpoint | None
    path: str
    error: Exception | None = None
    trial_id: str = ""

    @property
    def metrics_dataframe(self):
        """The trial's result.json as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        rows = []
        path = os.path.join(self.path, "result.json")
        if os.path.exists(path):
            with open(path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        return pd.DataFrame([{k: v for k, v in r.items() if k != "config"} for r in rows])

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.metrics.items() if k not in ("config",)}
        return f"Result(trial_id={self.trial_id!r}, metrics={shown}, path={self.path!r}" + (
            f", error={type(self.error).__name__})" if self.error else ")")


class ResultGrid:
    """The results of every trial, in trial order; index, iterate, or ask for the best."""

    def __init__(self, results: list[Result], experiment_path: str, metric: str | None = None,
                 mode: str | None = None):
        self._results = results
        self.experiment_path = experiment_path
        self._metric = metric
        self._mode = mode

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, i: int) -> Result:
        return self._results[i]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    @property
    def errors(self) -> list[Exception]:
        return [r.error for r in self._results if r.error is not None]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        return sum(1 for r in self._results if r.error is None)

    def get_best_result(self, metric: str | None = None, mode: str | None = None,
                        scope: str = "last", filter_nan_and_inf: bool = True) -> Result:
        """The trial with the best metric (its last result, or with scope="all" its best)."""
        metric = metric or self._metric
        mode = mode or self._mode
        if not metric or not mode:
            raise ValueError("get_best_result needs metric and mode (or set them in TuneConfig)")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if scope not in ("last", "all"):
            raise ValueError(f"scope must be 'last' or 'all', got {scope!r}")
        best, best_value = None, None
        for r in self._results:
            value = _metric_value(r, metric, mode, scope)
            if value is None or filter_nan_and_inf and not math.isfinite(value):
                continue
            if best is None or (value > best_value if mode == "max" else value < best_value):
                best, best_value = r, value
        if best is None:
            raise RuntimeError(f"no trial reported a finite {metric!r}; reported keys: "
                               f"{sorted({k for r in self._results for k in r.metrics})}")
        return best

    def get_dataframe(self, filter_metric: str | None = None, filter_mode: str | None = None):
        """One row per trial: its last result (or its best by filter_metric), flattened, with
        config/... columns. Needs pandas."""
        import pandas as pd

        from .storage import flatten

        rows = []
        for r in self._results:
            metrics = r.metrics
            if filter_metric and filter_mode:
                metrics = _best_row(r, filter_metric, filter_mode) or metrics
            row = flatten({k: v for k, v in metrics.items() if k != "config"})
            row.update(flatten(r.config, "config/"))
            row["logdir"] = r.path
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"ResultGrid<{len(self)} results, {self.num_errors} errors>"


def _rows(result: Result) -> list[dict]:
    path = os.path.join(result.path, "result.json")
    if not os.path.exists(path):
        return [result.metrics] if result.metrics else []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _best_row(result: Result, metric: str, mode: str) -> dict | None:
    rows = [r for r in _rows(result) if isinstance(r.get(metric), (int, float))]
    if not rows:
        return None
    pick = max if mode == "max" else min
    return pick(rows, key=lambda r: r[metric])


def _metric_value(result: Result, metric: str, mode: str, scope: str) -> float | None:
    if scope == "all":
        row = _best_row(result, metric, mode)
        return float(row[metric]) if row else None
    value = result.metrics.get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def to_result(trial: Any) -> Result:
    failed = trial.status == "ERROR"
    error = TrialError(f"trial {trial.trial_id} failed:\n{trial.error}") if failed else None
    return Result(metrics=dict(trial.last_result), config=trial.config,
                  checkpoint=Checkpoint(trial.checkpoint) if trial.checkpoint else None,
                  path=trial.local_path, error=error, trial_id=trial.trial_id)
