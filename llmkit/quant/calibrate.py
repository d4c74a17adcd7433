"""Calibration: the inputs each linear sees, gathered block by block through the model.

GPTQ, AWQ and SmoothQuant need the activations entering every linear layer.
Holding them for all layers at once would take rows x features x layers
floats, so, as in the GPTQ and AWQ reference code, the model is walked one
decoder block at a time: the inputs of the first block are captured once
(a pre-hook stops the forward there), then for each block the inputs of its
linears are recorded by forward hooks, the block's linears are quantised, and
the block is run again, now quantised, to produce the next block's inputs. So
each block is calibrated on what the already quantised blocks before it emit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Inputs = list[tuple[tuple, dict]]  # one (args, kwargs) call of a block per calibration batch


def calibration_batches(calibration: Sequence[str] | torch.Tensor, tokenizer=None, batch_size: int = 8
                        ) -> list[torch.Tensor]:
    """(B, T) LongTensors from a list of strings (one row each, tokenised) or an (N, T) tensor of ids."""
    if isinstance(calibration, torch.Tensor):
        if calibration.dtype != torch.long or calibration.dim() != 2:
            raise ValueError(f"calibration ids must be a (N, T) LongTensor, got {calibration.dtype} "
                             f"{tuple(calibration.shape)}")
        return list(calibration.split(batch_size))
    if isinstance(calibration, str) or not all(isinstance(t, str) for t in calibration):
        raise ValueError("calibration must be a list of strings (with tokenizer=) or a (N, T) LongTensor")
    if tokenizer is None:
        raise ValueError("calibration strings need tokenizer= to turn them into token ids")
    ids = [tokenizer.encode(t) for t in calibration]
    return [torch.tensor([row], dtype=torch.long) for row in ids if row]


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, blocks) of the model's decoder layers (``model.layers`` of a CausalLM)."""
    for path in ("model.layers", "layers"):
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            return path, blocks
    raise ValueError(f"calibrated quantisation walks a model's decoder blocks (model.layers); a "
                     f"{type(model).__name__} has none")


class _Captured(Exception):
    """Raised by the capture hook to stop the forward once the first block's inputs are recorded."""


@torch.no_grad()
def first_block_inputs(model: nn.Module, blocks: nn.ModuleList, batches: list[torch.Tensor]) -> Inputs:
    """The (args, kwargs) of every call of ``blocks[0]`` while the model runs each batch."""
    captured: Inputs = []

    def hook(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for ids in batches:
            try:
                model(ids.to(device))
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def linear_inputs(block: nn.Module, names: Sequence[str], inputs: Inputs) -> dict[str, torch.Tensor]:
    """Every input row each named linear of ``block`` sees over ``inputs``: name -> (rows, in) float32."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [block.get_submodule(n).register_forward_hook(_recorder(seen[n])) for n in names]
    try:
        for args, kwargs in inputs:
            block(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(rows) for n, rows in seen.items()}


def _recorder(rows: list[torch.Tensor]) -> Callable:
    def hook(module, args, _output):
        rows.append(args[0].detach().reshape(-1, module.in_features).float())
    return hook


@torch.no_grad()
def next_inputs(block: nn.Module, inputs: Inputs) -> Inputs:
    """The next block's calls: this block's output replaces the hidden state, the rest is passed on."""
    out = []
    for args, kwargs in inputs:
        y = block(*args, **kwargs)
        out.append(((y[0] if isinstance(y, tuple) else y, *args[1:]), kwargs))
    return out


def calibration_ids(tokenizer, source: str = "shakespeare", n: int = 32, seq_len: int = 256, seed: int = 0
                    ) -> torch.Tensor:
    """``n`` seeded windows of ``seq_len`` tokens from a text source's training split: (n, seq_len) ids.

    Args:
        tokenizer: the model's tokenizer.
        source: a corpus name (:data:`llmkit.data.CORPORA`; its held-out works are never used, so a
            perplexity on them stays held out) or a text file / folder.
        n: windows.
        seq_len: tokens per window.
        seed: which windows.
    Raises:
        ValueError: a source too short for one window.
    """
    from llmkit.data import load_corpus, split_documents

    train = split_documents(load_corpus(source), source)[0]
    docs = [d.text for d in train if len(d.text) > seq_len * 8]  # ~4 characters a token, with room to cut
    if not docs:
        raise ValueError(f"{source} has no document long enough for calibration windows of {seq_len} tokens")
    g = torch.Generator().manual_seed(seed)
    rows = []
    while len(rows) < n:
        text = docs[int(torch.randint(len(docs), (1,), generator=g))]
        start = int(torch.randint(len(text) - seq_len * 8 + 1, (1,), generator=g))
        ids = tokenizer.encode(text[start:start + seq_len * 8], add_special_tokens=False)
        if len(ids) >= seq_len:
            rows.append(ids[:seq_len])
    return torch.tensor(rows, dtype=torch.long)
