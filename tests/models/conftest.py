import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Run the zoo single-threaded: the models are tiny per call, and OpenMP threads contend on shared CI cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
