"""The seed tree: every seed is a path from the study seed, never a global RNG state.

``derive_seed(study_seed, "cell", cell_id, "train")`` gives the training seed of a cell;
``derive_seed(study_seed, "corruptor", "label_noise")`` the corruptor's. Two components never
share a stream, and adding a component does not shift anyone else's randomness.
"""

from __future__ import annotations

from typing import Any

from inheritlab.infra.hashing import stable_int

_MASK31 = (1 << 31) - 1


def derive_seed(study_seed: int, *path: Any) -> int:
    """A 63-bit seed for the node ``path`` under ``study_seed``."""
    return stable_int("seed-tree", int(study_seed), *path) >> 1


def derive_seed32(study_seed: int, *path: Any) -> int:
    """As :func:`derive_seed`, folded to 31 bits for APIs that take a C int (torch workers)."""
    return derive_seed(study_seed, *path) & _MASK31
