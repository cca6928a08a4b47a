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
