"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: small models are fastest so, and they do not fight the other
    tests for the cores. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
