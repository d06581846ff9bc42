"""Disjoint sets over row positions: duplicates and split groups are connected components of links."""

from __future__ import annotations

import numpy as np
import pandas as pd


class DisjointSet:
    """Union-find with path halving. A component's root is its smallest member, so it names the component
    the same way whatever order the links came in."""

    def __init__(self, size: int) -> None:
        self._parent = list(range(size))

    def root(self, item: int) -> int:
        parent = self._parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def link_pairs(self, pairs: np.ndarray) -> None:
        """Join the components of each (a, b) row of an (k, 2) array of positions."""
        for a, b in pairs.tolist():
            root_a, root_b = self.root(a), self.root(b)
            if root_a != root_b:
                self._parent[max(root_a, root_b)] = min(root_a, root_b)

    def components(self) -> np.ndarray:
        """Each member's component, named by its smallest member."""
        return np.array([self.root(i) for i in range(len(self._parent))], dtype=np.int64)


def equal_value_pairs(values: pd.Series) -> np.ndarray:
    """(first, other) position pairs linking the rows that hold the same non-null value."""
    present = np.flatnonzero(values.notna().to_numpy())
    if len(present) == 0:
        return np.empty((0, 2), dtype=np.int64)
    codes, _ = pd.factorize(values.iloc[present])
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    first_of_run = np.repeat(order[starts], np.diff(np.r_[starts, len(order)]))
    others = first_of_run != order
    return np.column_stack([present[first_of_run[others]], present[order[others]]]).astype(np.int64)
