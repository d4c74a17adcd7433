"""Fixtures shared across the test tree."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF via ``llmkit.io.pull`` (a no-op when cached); skip if unreachable."""
    from llmkit.fetch import FetchError
    from llmkit.io.pull import pull

    try:
        return pull("smollm2-135m-instruct")
    except FetchError as e:
        pytest.skip(str(e))
