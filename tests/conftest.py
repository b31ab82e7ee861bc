"""Test-suite set-up: offline-safe environment and GPU markers that skip without GPUs."""

from __future__ import annotations

import os
import tempfile

import pytest

# Before anything imports Prefect or Ray: no telemetry, and a Prefect home of the suite's own so
# tests never touch (or depend on) a user's ~/.prefect database.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="inheritlab-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    n = _cuda_count()
    for item in items:
        if "gpu" in item.keywords and n < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "multigpu" in item.keywords and n < 2:
            item.add_marker(pytest.mark.skip(reason="needs two or more CUDA GPUs"))


# A small built-in text world shared by the LM tests (read-only: tests write under their own tmp dirs).
TINY_TEXT_WORLD = dict(num_individuals=30, num_heldout_individuals=10, train_docs=150, test_docs=20,
                       qa_individuals=6, docs_per_shard=50, vocab_size=320)


@pytest.fixture(scope="session")
def tiny_text_world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from inheritlab.corruptors.text_world import TextWorldConfig, write_text_world

    return write_text_world(TextWorldConfig(**TINY_TEXT_WORLD), tmp_path_factory.mktemp("tiny_text") / "world")
