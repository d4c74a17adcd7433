"""`LLM`: the offline API (vLLM's): load a model, hand it many prompts, get every output back in order."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence as Seq
from typing import Any

import torch
from tqdm.auto import tqdm

from llmkit.engine.llm_engine import LLMEngine
from llmkit.engine.model_runner import BATCH_BUCKETS
from llmkit.engine.outputs import RequestOutput
from llmkit.engine.speculative import SpeculativeConfig
from llmkit.generate.sampling import SamplingParams
from llmkit.model import CausalLM
from llmkit.tokenizer import Tokenizer

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def _as_list(prompts: Any) -> list[Any]:
    """One prompt (text, token ids, a conversation) or a list of them -> a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Seq) and prompts and all(isinstance(p, int) for p in prompts):
        return [list(prompts)]
    if isinstance(prompts, Seq) and prompts and all(isinstance(p, Mapping) for p in prompts):
        return [prompts]
    return list(prompts)


class LLM:
    """An engine and its model, for batch generation.

    Args:
        model: a model name, HF directory or ``.gguf`` file (as ``CausalLM.from_pretrained`` and
            ``llmkit pull`` accept), or a :class:`CausalLM` (then pass ``tokenizer``).
        tokenizer: the tokenizer when ``model`` is a module.
        dtype: weight dtype ("bf16", "fp32" or a torch dtype); None keeps the checkpoint's.
        device: where to run; None = CUDA when available, else CPU.
        compile: compile decode-only steps (``torch.compile``, one compile per batch bucket, tens of
            seconds each on CPU); None = compile on CUDA (CUDA graphs), eager elsewhere.
        compile_max_batch: with ``compile``, compile only decode steps of at most this many sequences
            (on CPU compiling pays at small batches, where per-op overhead dominates).
        **engine: :class:`LLMEngine` options (max_num_seqs, max_num_batched_tokens, block_size,
            kv_cache_memory, kv_cache_dtype, enable_prefix_caching, speculative, lora_adapters,
            prepack_weights).
    """

    def __init__(self, model: str | os.PathLike | CausalLM, *, tokenizer: Tokenizer | None = None,
                 dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
                 max_num_seqs: int = 64, max_num_batched_tokens: int = 2048, block_size: int = 16,
                 kv_cache_memory: int | str | None = None, kv_cache_dtype: str | None = None,
                 enable_prefix_caching: bool = True,
                 speculative: SpeculativeConfig | None = None, compile: bool | None = None,
                 lora_adapters: Mapping[str, str | os.PathLike] | None = None, compile_max_batch: int = BATCH_BUCKETS[-1],
                 prepack_weights: bool | None = None):
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        if isinstance(model, CausalLM):
            if tokenizer is None:
                raise ValueError("pass tokenizer= with a CausalLM module")
            if dtype is not None or device is not None:
                model = model.to(device=device, dtype=dtype)
        else:
            from llmkit.generate import load_model_and_tokenizer

            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model, loaded = load_model_and_tokenizer(model, dtype=dtype, device=device)
            tokenizer = tokenizer or loaded
        self.engine = LLMEngine(model, tokenizer, max_num_seqs=max_num_seqs,
                                max_num_batched_tokens=max_num_batched_tokens, block_size=block_size,
                                kv_cache_memory=kv_cache_memory, kv_cache_dtype=kv_cache_dtype,
                                enable_prefix_caching=enable_prefix_caching,
                                speculative=speculative,
                                compile=model.device.type == "cuda" if compile is None else compile,
                                lora_adapters=lora_adapters, compile_max_batch=compile_max_batch,
                                prepack_weights=prepack_weights)
        self._next_id = 0

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(self, prompts: Any, sampling_params: SamplingParams | Seq[SamplingParams] | None = None, *,
                 use_tqdm: bool = True, lora_name: str | Seq[str | None] | None = None) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in prompt order.

        Args:
            prompts: a prompt or a list: strings, token-id lists, or conversations (lists of
                ``{"role", "content"}`` messages, rendered with the chat template).
            sampling_params: one :class:`SamplingParams` for all, or one per prompt; None = greedy.
            use_tqdm: show a progress bar over finished requests.
            lora_name: the LoRA adapter (a name given in ``lora_adapters``) for all prompts, or one per
                prompt; None = the base model.
        Raises:
            ValueError: a bad prompt or parameter (nothing is queued then).
        """
        prompts = _as_list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        loras = [lora_name] * len(prompts) if lora_name is None or isinstance(lora_name, str) else list(lora_name)
        if len(loras) != len(prompts):
            raise ValueError(f"got {len(loras)} lora_name for {len(prompts)} prompts")
        engine = self.engine
        for prompt, p, lora in zip(prompts, params, loras):  # refuse the batch before queueing any of it
            engine.check_request(prompt, p, lora)
        ids = []
        for prompt, p, lora in zip(prompts, params, loras):
            ids.append(str(self._next_id))
            self._next_id += 1
            engine.add_request(ids[-1], prompt, p, lora_name=lora)
        done: dict[str, RequestOutput] = {}
        with tqdm(total=len(ids), desc="generate", unit="req", disable=not use_tqdm) as bar:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
        return [done[i] for i in ids]
