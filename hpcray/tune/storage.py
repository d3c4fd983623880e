"""The experiment directory: atomic writes, per-trial files, and what a restore reads back."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import queue
import re
import shutil
import stat
import threading
from collections.abc import Callable
from typing import Any

from .trial import Trial

EXPERIMENT_STATE = "experiment_state.json"
TUNER_FILE = "tuner.pkl"
SEARCH_FILE = "search_state.pkl"
TRIAL_STATE = "trial_state.json"


def default_storage_path() -> str:
    return os.environ.get("HPCRAY_TUNE_STORAGE") or os.path.expanduser("~/hpcray_results")


def atomic_write(path: str, data: bytes | str) -> None:
    """Writes path so a reader (or a restore after a kill) sees the old or the new file, whole."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.replace(tmp, path)


def _default(value: Any) -> Any:
    """What json.dumps writes for values JSON has no type for: numpy scalars as numbers."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return repr(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _json_safe(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def dumps(value: Any, **kwargs) -> str:
    """JSON text of value; NaN and infinity are written as NaN/Infinity, as Ray does."""
    return json.dumps(value, default=_default, **kwargs)


def flatten(result: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a/b": 1}, for progress.csv."""
    out = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


class _Writer:
    """One thread doing the experiment's file writes in order, off the driver's loop:
    creating and opening files is slow on shared file systems (a millisecond or more each)."""

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tune-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"writing the experiment's files failed: {error}") from error
        self._jobs.put((fn, args))

    def _run(self) -> None:
        while True:
            fn, args = self._jobs.get()
            if fn is None:
                self._jobs.task_done()
                return
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - reported by the next submit or flush
                self._error = exc
            finally:
                self._jobs.task_done()

    def flush(self) -> None:
        """Returns once every write submitted so far is done; raises if one failed."""
        self._jobs.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"writing the experiment's files failed: {error}") from error

    def close(self) -> None:
        self._jobs.put((None, ()))
        self._thread.join()


class ExperimentStorage:
    """Where one experiment's files live: ``<storage_path>/<name>/``, one folder per trial.

    Writes go through one background thread in order; flush() waits for them."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        os.makedirs(self.path, exist_ok=True)
        self._writer: _Writer | None = None

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._writer is None:
            self._writer = _Writer()
        self._writer.submit(fn, *args)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Finishes the pending writes and stops the writer thread."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            writer.flush()

    def write_params(self, trial: Trial) -> None:
        """params.json for people, params.pkl (atomic) for a restore."""
        pickled = pickle.dumps({"trial_id": trial.trial_id, "index": trial.index,
                                "config": trial.config})
        self._submit(_write_params, trial.local_path, dumps(trial.config, indent=2,
                                                           sort_keys=True), pickled)

    def write_trial_state(self, trial: Trial) -> None:
        self._submit(atomic_write, os.path.join(trial.local_path, TRIAL_STATE),
                     dumps(trial.state()))

    def append_result(self, trial: Trial, result: dict) -> None:
        """One JSON line in result.json and one row in progress.csv (files kept open)."""
        self._submit(self._append_result, trial, dumps(result),
                     flatten({k: v for k, v in result.items() if k != "config"}))

    def _append_result(self, trial: Trial, line: str, row: dict) -> None:
        files = trial.extra.get("files")
        if files is None:
            csv_path = os.path.join(trial.local_path, "progress.csv")
            new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
            files = trial.extra["files"] = (
                open(os.path.join(trial.local_path, "result.json"), "a"),  # noqa: SIM115
                open(csv_path, "a"), new)  # noqa: SIM115 - closed by close_results
        results, progress, new = files
        results.write(line + "\n")
        results.flush()
        fields = trial.extra.get("csv_fields")
        if fields is None:
            fields = trial.extra["csv_fields"] = list(row)
        writer = csv.DictWriter(progress, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
            trial.extra["files"] = (results, progress, False)
        writer.writerow({k: _json_safe(v) for k, v in row.items()})
        progress.flush()

    def close_results(self, trial: Trial) -> None:
        self._submit(_close_results, trial)

    def write_error(self, trial: Trial, text: str) -> None:
        self._submit(_write_error, trial.local_path, trial.num_failures, text)

    def write_experiment_state(self, trials: list[Trial], info: dict) -> None:
        state = {**info, "trials": [t.state() for t in trials]}
        self._submit(atomic_write, os.path.join(self.path, EXPERIMENT_STATE), dumps(state))

    def write_pickle(self, name: str, value: Any) -> None:
        import cloudpickle

        self._submit(atomic_write, os.path.join(self.path, name), cloudpickle.dumps(value))

    def remove_checkpoint(self, path: str) -> None:
        self._submit(shutil.rmtree, path, True)


    def read_pickle(self, name: str) -> Any:
        path = os.path.join(self.path, name)
        trusted(self.path, path)
        with open(path, "rb") as f:
            return pickle.load(f)

    def load_trials(self) -> list[Trial]:
        """Every trial with a folder: a finished one as its trial_state.json says, an
        unfinished one from its latest complete checkpoint, its later results dropped."""
        known: dict[str, Trial] = {}
        state_path = os.path.join(self.path, EXPERIMENT_STATE)
        if os.path.exists(state_path):
            with open(state_path) as f:
                for t in json.load(f)["trials"]:
                    known[t["trial_id"]] = Trial.from_state(t)
        trials = []
        for entry in sorted(os.listdir(self.path)):
            folder = os.path.join(self.path, entry)
            params = os.path.join(folder, "params.pkl")
            if not os.path.exists(params):
                continue
            trusted(self.path, folder, params)
            with open(params, "rb") as f:
                saved = pickle.load(f)
            state = os.path.join(folder, TRIAL_STATE)
            if os.path.exists(state):
                with open(state) as f:
                    trial = Trial.from_state(json.load(f))
            else:
                trial = known.get(saved["trial_id"]) or Trial(saved["trial_id"], {},
                                                               saved["index"])
            trial.config = saved["config"]
            trial.local_path = folder
            trial.extra = {}
            if not trial.is_finished:
                # the latest checkpoint whose results were all written: none lost, and the
                # iterations after it run again (their results dropped first)
                recorded = _recorded_iterations(folder)
                trial.checkpoints = [c for c in _checkpoints(folder) if _iteration(c) <= recorded]
                trial.checkpoint = trial.checkpoints[-1] if trial.checkpoints else None
                trial.iteration = _iteration(trial.checkpoint)
                trial.last_result = _truncate_results(folder, trial.iteration)
                trial.time_total_s = float(trial.last_result.get("time_total_s", 0.0))
            trials.append(trial)
        return sorted(trials, key=lambda t: t.index)


def _iteration(checkpoint: str | None) -> int:
    """The training_iteration a checkpoint folder was saved at (its name says)."""
    match = re.search(r"checkpoint_(\d+)$", checkpoint or "")
    return int(match.group(1)) if match else 0


def _checkpoints(folder: str) -> list[str]:
    """Complete checkpoint folders, oldest first (a .tmp one was cut off mid-write)."""
    names = [n for n in os.listdir(folder) if re.fullmatch(r"checkpoint_\d+", n)]
    return [os.path.join(folder, n) for n in sorted(names, key=lambda n: _iteration(n))]


def _recorded_iterations(folder: str) -> int:
    """How many iterations result.json holds in an unbroken run from the first."""
    count = 0
    path = os.path.join(folder, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    break
                if row.get("training_iteration") != count + 1:
                    break
                count += 1
    return count


def _truncate_results(folder: str, iteration: int) -> dict:
    """Drops results after iteration from result.json and progress.csv (the trial reruns
    them); returns the last result kept."""
    last: dict = {}
    path = os.path.join(folder, "result.json")
    if os.path.exists(path):
        kept = []
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut off by the kill
                if row.get("training_iteration", 0) <= iteration:
                    kept.append(line if line.endswith("\n") else line + "\n")
                    last = row
        atomic_write(path, "".join(kept))
    path = os.path.join(folder, "progress.csv")
    if os.path.exists(path):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            header = rows[0]
            col = header.index("training_iteration") if "training_iteration" in header else None
            body = [r for r in rows[1:] if len(r) == len(header) and col is not None
                    and r[col].isdigit() and int(r[col]) <= iteration]
            buf = io.StringIO()
            csv.writer(buf).writerows([header, *body])
            atomic_write(path, buf.getvalue())
    return last


def _write_params(folder: str, text: str, pickled: bytes) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "params.json"), "w") as f:
        f.write(text)
    atomic_write(os.path.join(folder, "params.pkl"), pickled)


def _write_error(folder: str, failures: int, text: str) -> None:
    with open(os.path.join(folder, "error.txt"), "a") as f:
        f.write(f"Failure # {failures}\n{text}\n")


def copy_checkpoint(source: str, target: str) -> None:
    """Copies a checkpoint folder to target atomically (a PBT exploit's clone)."""
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _close_results(trial: Trial) -> None:
    files = trial.extra.pop("files", None)
    if files is not None:
        files[0].close()
        files[1].close()


def trusted(*paths: str) -> None:
    """Refuses to unpickle from what another user owns or may change: unpickling runs code, so
    a planted experiment folder or file would run theirs inside this job."""
    me = os.getuid()
    for path in paths:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            problem = "is a symlink"
        elif info.st_uid != me:
            problem = f"belongs to uid {info.st_uid}, not to you (uid {me})"
        elif info.st_mode & stat.S_IWOTH:
            problem = "is writable by every user"
        else:
            continue
        raise PermissionError(f"hpcray.tune: {path} {problem}, so its pickles could run someone "
                              "else's code; restore only from an experiment folder of your own "
                              "(chmod o-w it if it is yours)")
