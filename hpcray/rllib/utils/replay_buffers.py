"""Replay buffers: uniform (ReplayBuffer) and proportional prioritized (PrioritizedReplayBuffer)."""

from __future__ import annotations

import numpy as np


class ReplayBuffer:
    """A ring of transitions stored column-wise (dict of arrays); uniform sampling."""

    def __init__(self, capacity: int = 50_000, seed: int | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.columns: dict[str, np.ndarray] = {}
        self.size = 0
        self.next = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Appends the rows of batch (overwriting the oldest); returns their slots."""
        n = len(next(iter(batch.values())))
        if not self.columns:
            self.columns = {k: np.zeros((self.capacity,) + np.asarray(v).shape[1:],
                                        dtype=np.asarray(v).dtype) for k, v in batch.items()}
        slots = (self.next + np.arange(n)) % self.capacity
        for key, value in batch.items():
            self.columns[key][slots] = value
        self.next = int((self.next + n) % self.capacity)
        self.size = int(min(self.capacity, self.size + n))
        return slots

    def _rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.columns.items()}

    def sample(self, batch_size: int, **_) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("sample() from an empty replay buffer: add transitions first")
        idx = self.rng.integers(0, self.size, batch_size)
        out = self._rows(idx)
        out["weights"] = np.ones(batch_size, dtype=np.float32)
        out["batch_indexes"] = idx
        return out

    def update_priorities(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        pass

    def get_state(self) -> dict:
        return {"columns": self.columns, "size": self.size, "next": self.next,
                "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.columns, self.size, self.next = state["columns"], state["size"], state["next"]
        self.rng.bit_generator.state = state["rng"]


class SumTree:
    """Sums over a power-of-two leaf array: O(log n) update and prefix-sum search."""

    def __init__(self, capacity: int):
        self.leaves = 1 << max(0, int(capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)

    def set(self, idx: np.ndarray, values: np.ndarray) -> None:
        pos = np.asarray(idx, dtype=np.int64) + self.leaves
        self.tree[pos] = values
        pos = np.unique(pos // 2)
        while pos[0] >= 1:
            self.tree[pos] = self.tree[2 * pos] + self.tree[2 * pos + 1]
            pos = np.unique(pos // 2)
            if pos[0] == 0:
                break

    def total(self) -> float:
        return float(self.tree[1])

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf i with cumsum[i-1] <= mass < cumsum[i], for each mass (vectorised)."""
        node = np.ones(len(mass), dtype=np.int64)
        mass = np.asarray(mass, dtype=np.float64).copy()
        while node[0] < self.leaves:
            left = self.tree[2 * node]
            go_right = mass >= left
            mass = np.where(go_right, mass - left, mass)
            node = 2 * node + go_right
        return node - self.leaves


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016): P(i) ~ p_i ** alpha, importance
    weights (N P(i)) ** -beta divided by the largest possible weight."""

    def __init__(self, capacity: int = 50_000, alpha: float = 0.6, beta: float = 0.4,
                 seed: int | None = None):
        super().__init__(capacity, seed)
        self.alpha, self.beta = float(alpha), float(beta)
        self.tree = SumTree(self.capacity)
        self.max_priority = 1.0

    def add(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        slots = super().add(batch)
        self.tree.set(slots, np.full(len(slots), self.max_priority ** self.alpha))
        return slots

    def sample(self, batch_size: int, beta: float | None = None) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("sample() from an empty replay buffer: add transitions first")
        beta = self.beta if beta is None else beta
        total = self.tree.total()
        mass = self.rng.random(batch_size) * total
        idx = np.minimum(self.tree.find(mass), self.size - 1)
        leaves = self.tree.tree[self.tree.leaves:self.tree.leaves + self.size]
        probs = leaves[idx] / total
        max_weight = (leaves.min() / total * self.size) ** -beta
        out = self._rows(idx)
        out["weights"] = ((probs * self.size) ** -beta / max_weight).astype(np.float32)
        out["batch_indexes"] = idx
        return out

    def update_priorities(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        priorities = np.abs(np.asarray(priorities, dtype=np.float64)) + 1e-6
        self.tree.set(idx, priorities ** self.alpha)
        self.max_priority = max(self.max_priority, float(priorities.max()))

    def get_state(self) -> dict:
        return {**super().get_state(), "tree": self.tree.tree, "max": self.max_priority}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self.tree.tree, self.max_priority = state["tree"], state["max"]
