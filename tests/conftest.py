import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_shared_wandb_service(monkeypatch):
    # wandb.init in this process exports WANDB_SERVICE (its background service's address); a `cmkd` subprocess that
    # inherits it attaches to that service instead of starting its own, so a killed run's id stays registered
    # there ("run ID ... is in use" on resume). Each subprocess a test starts gets its own service, as a user's
    # runs from a shell do.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


# What Lightning's launchers write into this process's environment when a test runs DDP here (ddp_fork sets
# MASTER_PORT in the parent). Left behind, they reach every later `cmkd` subprocess, whose launcher then reuses a
# stale port and, with WORLD_SIZE / LOCAL_RANK, may even take itself for a rank of some other job.
_LAUNCHER_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
)


@pytest.fixture(autouse=True)
def _no_launcher_variables_left_behind():
    saved = {name: os.environ.pop(name) for name in _LAUNCHER_VARIABLES if name in os.environ}
    yield
    for name in _LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(saved)
