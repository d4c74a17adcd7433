"""llama.cpp loads our GGUF Q8_0/Q4_0 exports of SmolLM2 and scores them within 1% of llmkit.

The check itself is ``benchmarks/gguf_llama_check.py`` (also a script); it needs the
``llama-perplexity`` binary that ``benchmarks/build_llama_server.sh`` builds, and skips without it.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gguf_llama_check  # noqa: E402
import llama_cpp_tools  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(llama_cpp_tools.tool("llama-perplexity") is None,
                                                   reason="llama-perplexity not built (benchmarks/build_llama_server.sh)")]


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_llama_cpp_scores_our_export_as_we_do(dtype, smollm2_gguf, tmp_path):
    ours, theirs = gguf_llama_check.check(dtype, n_ctx=256, chunks=2, out=tmp_path, threads=1)
    assert abs(theirs - ours) / ours < 0.01, (ours, theirs)
