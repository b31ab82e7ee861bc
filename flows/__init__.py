"""Prefect flows and the CLI: study → cells → stages."""

import os

# Without a configured server, every process starts a temporary Prefect server; on a busy
# 2-core laptop its start can take longer than Prefect's 20 s default, failing the whole study.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
