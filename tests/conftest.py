"""Fixtures for the whole suite."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors everywhere in the suite: intra-op threads only add contention on a shared
    # 2-core machine (and jobs started as subprocesses choose their own thread counts).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
