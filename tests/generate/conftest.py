"""Fixtures for generation tests: tiny random models, a scripted model, a small trained tokenizer, SmolLM2."""
from __future__ import annotations

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.tokenizer import Tokenizer

TINY = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64, init_std=0.2)
# transformers' tiny Llama; initializer_range 0.25 gives O(1) logits, so argmax ties cannot happen by accident
HF_TINY = dict(vocab_size=48, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.25,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture(scope="session")
def tiny() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(**TINY)).eval()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(transformers' tiny random Llama, the same checkpoint loaded by llmkit)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_TINY)).float().eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(path)
    return hf, CausalLM.from_pretrained(path)


class ScriptedLM(CausalLM):
    """A CausalLM whose greedy output is fixed: row b's i-th generated token is ``script[b, i]``.

    It keeps the real layers (so caches are set up as usual) but its forward returns one-hot
    logits chosen by cache slot, which makes the text layer testable token by token.
    """

    def __init__(self, vocab_size: int, script: torch.Tensor, prompt_len: int):
        super().__init__(ModelConfig(**{**TINY, "vocab_size": vocab_size, "n_layers": 1, "max_seq_len": 128}))
        self.script, self.prompt_len = script, prompt_len

    def forward(self, input_ids, input_pos=None, attention_mask=None, position_ids=None, logits_to_keep=0):
        b = input_ids.shape[0]
        step = int(input_pos[-1]) + 1 - self.prompt_len  # index of the token to predict
        nxt = self.script[:b, min(step, self.script.shape[1] - 1)]
        logits = torch.zeros(b, input_ids.shape[1], self.cfg.vocab_size)
        logits[torch.arange(b), -1, nxt] = 10.0
        return logits


@pytest.fixture
def scripted():
    """``scripted(tokenizer, prompts, outputs)``: a ScriptedLM answering each prompt with its output text, then EOS."""
    from llmkit.generate.prompts import encode_prompts

    def build(tokenizer: Tokenizer, prompts, outputs: list[str]) -> ScriptedLM:
        rows, _ = encode_prompts(tokenizer, prompts)
        scripts = [tokenizer.encode(o, add_special_tokens=False) + [tokenizer.eos_id] for o in outputs]
        n = max(map(len, scripts))
        script = torch.tensor([s + [tokenizer.eos_id] * (n - len(s)) for s in scripts])
        return ScriptedLM(tokenizer.vocab_size, script, max(map(len, rows))).eval()

    return build


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A small byte-level BPE with ChatML markers (EOS = <|endoftext|>)."""
    text = ("Hello world. The quick brown fox jumps over the lazy dog. END of story.\n" * 20
            + "Emoji 🤗 and café, naïve, 日本語.\n" * 5)
    return Tokenizer.train([text], vocab_size=300, min_frequency=2)


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """(our SmolLM2-135M-Instruct from the GGUF, its tokenizer)."""
    from llmkit.generate import load_model_and_tokenizer

    return load_model_and_tokenizer(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf):
    """transformers' SmolLM2-135M-Instruct from the same GGUF (dequantised to fp32)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).eval()
