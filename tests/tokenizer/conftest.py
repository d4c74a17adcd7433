"""Shared fixtures: the SmolLM2 GGUF (ours and transformers' view of it) and a small trained tokenizer."""
from __future__ import annotations

import argparse
import copy
import json
import os
import textwrap
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers

from llmkit.tokenizer import Tokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Texts that exercise every pre-tokenizer branch: ASCII, accents, CJK, emoji
# (multi-codepoint too), code, digit runs, whitespace runs, special tokens.
SAMPLES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog. It's 12:45 on 2024-01-02; pi≈3.14159.",
    "Café, naïve façade, Ærøskøbing, São Paulo, Zürich — “quotes” and ‘apostrophes’.",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 🤗🚀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tif x != 0: print(f'{x=}')\n",
    "   leading spaces, trailing spaces   \n\n\n  \t tabs\tand\r\nCRLF  ",
    "1234567890 007 3.0e-10 $1,000,000",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>a<|im_end|><repo_name>",
    "",
    " ",
    "I'm sure they'll've done it, we're told; ISN'T it?",
]


def _cache_root() -> Path:
    return Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit")).expanduser()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF: from the llmkit cache, else `llmkit pull`, else skip."""
    path = _cache_root() / "models" / SMOLLM2_FILE
    if path.is_file():
        return path
    try:
        from llmkit.fetch import FetchError
        from llmkit.io.pull import pull
    except ImportError:
        pytest.skip(f"{path} is missing and llmkit.io.pull is unavailable; run `llmkit pull smollm2-135m-instruct`")
    try:
        return Path(pull("smollm2-135m-instruct"))
    except (FetchError, OSError) as e:  # offline, registry down: a missing asset, not a failure
        pytest.skip(f"{path} is missing and pulling it failed: {e}")


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(smollm2_gguf)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf: Path):
    """transformers' own reading of the same GGUF's tokenizer."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="session")
def hf_smollm2_digits(hf_smollm2):
    """transformers' GGUF tokenizer with SmolLM2's original pre-tokenizer (digits isolated)."""
    hf = copy.deepcopy(hf_smollm2)
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    return hf


@pytest.fixture(params=range(len(SAMPLES)), ids=lambda i: f"sample{i}")
def sample(request: pytest.FixtureRequest) -> str:
    return SAMPLES[request.param]


@pytest.fixture(scope="session")
def corpus() -> str:
    """A small, deterministic, mixed corpus (~100 KB): some stdlib sources plus the samples."""
    sources = [Path(m.__file__).read_text(encoding="utf-8") for m in (json, argparse, textwrap)]
    return "\n".join(sources + SAMPLES * 3)


@pytest.fixture(scope="session")
def trained(corpus: str) -> Tokenizer:
    return Tokenizer.train([corpus], vocab_size=1000, min_frequency=2)


@pytest.fixture(scope="session")
def hf_trained(trained: Tokenizer, tmp_path_factory: pytest.TempPathFactory):
    """The trained tokenizer saved with save_pretrained and loaded by AutoTokenizer."""
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("trained")
    trained.save_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(str(directory))

