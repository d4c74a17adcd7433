"""Fixtures shared across the test tree."""
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for every test: on a CPU shared with other jobs, OpenMP threads waiting on
    each other slow small steps down several-fold, and the test models are too small to gain from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF via ``llmkit.io.pull`` (a no-op when cached); skip if unreachable."""
    from llmkit.fetch import FetchError
    from llmkit.io.pull import pull

    try:
        return pull("smollm2-135m-instruct")
    except FetchError as e:
        pytest.skip(str(e))
