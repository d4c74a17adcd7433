"""Many LoRA adapters served from one base model, mixed token by token in one batch (punica / vLLM's multi-LoRA).

Each adapted linear layer becomes a :class:`MultiLoRALinear`: it keeps the
frozen ``base_layer`` and holds every adapter's weights stacked by *slot*
(``lora_a`` (S, r, in), ``lora_b`` (S, out, r), ``scaling`` (S,)), ranks
zero-padded to the largest. A forward computes, for each token t with slot
i(t),

    y_t = base(x_t) + scaling[i] * B_i (A_i x_t)        (nothing added when i(t) = -1: the base model)

The slot of every token of the next forward is an explicit input: a
:class:`LoRAMapping` that the caller (the engine's model runner) fills for the
step, and that every wrapped layer of the model references. No global.

Batched computation, chosen for CPU: tokens are grouped by slot once per step
(in the mapping), and each layer runs two dense GEMMs per adapter present in
the step, over that adapter's tokens only, then adds the result into its rows
(``index_add_``). The alternative, gathering A/B per token (punica's BGMV),
materialises a (T, r, in) weight tensor without a fused kernel; grouping costs
nothing for base tokens and does a single-LoRA forward's flops (each slot
uses its own rank's slice of the padded stacks).
Adapter weights are float32 and the input is cast to them, as in
:class:`~llmkit.peft.lora.LoRALinear`, so a token's result equals the
single-adapter wrapper's.

:class:`LoRAManager` loads adapters in peft's format (what ``llmkit
finetune`` and :func:`~llmkit.peft.save_adapter` write) into slots, wrapping
the targeted layers on first use; shapes, targets and settings are checked
before anything changes, and a refusal names the adapter. Supported: plain
LoRA and rsLoRA on linear layers inside the model (not the output head,
whose rows are a subset of the step's tokens, nor embeddings); DoRA, IA3 and
virtual-token adapters are refused.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from llmkit.io.errors import CheckpointError
from llmkit.peft.apply import LINEAR_KINDS
from llmkit.peft.base import module_device, replace_module
from llmkit.peft.format import check_supported, group_by_module, read_adapter


class LoRAMapping:
    """The adapter slot of each token of the current forward, grouped by slot.

    ``groups`` is a list of (slot, (n,) token rows) for the slots present; empty means every
    token runs the base model (also outside :meth:`use`, e.g. another caller of the same model).
    """

    def __init__(self):
        self.groups: list[tuple[int, torch.Tensor]] = []
        self.num_tokens = 0

    @contextlib.contextmanager
    def use(self, slots: Sequence[int], device: torch.device | str) -> Iterator[None]:
        """Within the ``with``, token t of the flattened batch uses adapter slot ``slots[t]`` (-1 = none)."""
        rows: dict[int, list[int]] = {}
        for t, slot in enumerate(slots):
            if slot >= 0:
                rows.setdefault(slot, []).append(t)
        self.groups = [(slot, torch.tensor(r, device=device)) for slot, r in rows.items()]
        self.num_tokens = len(slots)
        try:
            yield
        finally:
            self.groups, self.num_tokens = [], 0


class MultiLoRALinear(nn.Module):
    """A linear layer plus the LoRA updates of several adapters, chosen per token by a :class:`LoRAMapping`.

    Args:
        base_layer: the frozen linear (``nn.Linear`` or a quantised linear); kept as ``self.base_layer``.
        mapping: the mapping the model's caller fills before each forward.
    """

    def __init__(self, base_layer: nn.Module, mapping: LoRAMapping):
        super().__init__()
        self.base_layer = base_layer
        self.mapping = mapping
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        device = module_device(base_layer)
        self.register_buffer("lora_a", torch.zeros(0, 0, self.in_features, device=device))  # (S, r, in)
        self.register_buffer("lora_b", torch.zeros(0, self.out_features, 0, device=device))  # (S, out, r)
        self.register_buffer("scaling", torch.zeros(0, device=device))  # (S,)
        self.ranks: list[int] = []  # per slot: that adapter's rank here (0: it does not adapt this layer)

    @torch.no_grad()
    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        """Put one adapter's A (r, in) and B (out, r) in ``slot``, growing the stacks as needed."""
        slots, rank = max(slot + 1, len(self.ranks)), max(a.shape[0], self.lora_a.shape[1])
        if (slots, rank) != (self.lora_a.shape[0], self.lora_a.shape[1]):
            grown_a = self.lora_a.new_zeros(slots, rank, self.in_features)
            grown_b = self.lora_b.new_zeros(slots, self.out_features, rank)
            grown_a[:self.lora_a.shape[0], :self.lora_a.shape[1]] = self.lora_a
            grown_b[:self.lora_b.shape[0], :, :self.lora_b.shape[2]] = self.lora_b
            self.lora_a, self.lora_b = grown_a, grown_b
            self.scaling = torch.cat([self.scaling, self.scaling.new_zeros(slots - len(self.scaling))])
            self.ranks += [0] * (slots - len(self.ranks))
        r = a.shape[0]
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.lora_a[slot, :r] = a
        self.lora_b[slot, :, :r] = b
        self.scaling[slot] = scaling
        self.ranks[slot] = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        result = self.base_layer(x)
        groups = [(s, rows) for s, rows in self.mapping.groups if s < len(self.ranks) and self.ranks[s]]
        if not groups:
            return result
        flat_x = x.reshape(-1, self.in_features)  # (T, in)
        if flat_x.shape[0] != self.mapping.num_tokens:
            raise RuntimeError(f"the LoRA mapping covers {self.mapping.num_tokens} tokens, the layer got "
                               f"{flat_x.shape[0]}")
        out = result.reshape(-1, self.out_features)  # (T, out), the base layer's fresh output: added to in place
        for slot, rows in groups:
            xs = flat_x.index_select(0, rows).to(self.lora_a.dtype)  # (n, in)
            r = self.ranks[slot]
            delta = (xs @ self.lora_a[slot, :r].T) @ self.lora_b[slot, :, :r].T * self.scaling[slot]  # (n, out)
            out.index_add_(0, rows, delta.to(out.dtype))
        return out.view_as(result)

    def extra_repr(self) -> str:
        return f"ranks={self.ranks}"


def read_lora(directory: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """A peft LoRA adapter as {module path: (A (r, in), B (out, r), scaling)}.

    Raises:
        CheckpointError: missing or corrupt files.
        ValueError: an adapter kind or setting multi-LoRA serving does not implement.
    """
    directory = Path(directory)
    config, flat = read_adapter(directory)
    if config.get("peft_type") != "LORA":
        raise ValueError(f"peft_type={config.get('peft_type')!r}; multi-LoRA serving loads LORA adapters")
    check_supported(directory, config)
    if config.get("use_dora"):
        raise ValueError("DoRA adapters are not supported by multi-LoRA serving (merge it into the model instead)")
    out = {}
    for path, tensors in group_by_module(directory, flat).items():
        if set(tensors) != {"lora_A.weight", "lora_B.weight"}:
            raise ValueError(f"{path} has tensors {sorted(tensors)}; multi-LoRA serving adapts linear layers "
                             "(lora_A.weight, lora_B.weight) only")
        a, b = tensors["lora_A.weight"], tensors["lora_B.weight"]
        r = a.shape[0]
        alpha = config.get("lora_alpha", 8)
        out[path] = (a, b, alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)
    if not out:
        raise CheckpointError(f"{directory}: the adapter holds no LoRA tensors")
    return out


class LoRAManager:
    """The adapters served from one base model: their names, slots and the wrapped layers.

    Args:
        model: the base model; targeted linear layers are replaced in place by :class:`MultiLoRALinear`.
        mapping: the per-token slots every wrapped layer reads (the model runner fills it each step).
    """

    def __init__(self, model: nn.Module, mapping: LoRAMapping):
        self.model, self.mapping = model, mapping
        self.slots: dict[str, int] = {}  # adapter name -> slot
        self.directories: dict[str, str] = {}

    def slot(self, name: str | None) -> int:
        """The slot of adapter ``name`` (-1 for None, the base model)."""
        return -1 if name is None else self.slots[name]

    def add(self, name: str, directory: str | Path) -> int:
        """Load the adapter in ``directory`` under ``name``; returns its slot.

        Raises:
            ValueError: naming the adapter: a name in use, unreadable files, an unsupported kind, a target
                the model lacks or cannot adapt, or weights whose shapes do not fit the base layers.
        """
        if not name or name in self.slots:
            raise ValueError(f"LoRA adapter name {name!r} is empty or already in use")
        try:
            weights = self._checked(read_lora(directory))
        except (CheckpointError, ValueError) as e:
            raise ValueError(f"LoRA adapter {name!r} ({directory}): {e}") from None
        slot = len(self.slots)
        for path, (a, b, scaling) in weights.items():
            layer = self.model.get_submodule(path)
            if not isinstance(layer, MultiLoRALinear):
                layer = MultiLoRALinear(layer, self.mapping)
                replace_module(self.model, path, layer)
            layer.set_slot(slot, a.float(), b.float(), scaling)
        self.slots[name], self.directories[name] = slot, str(directory)
        return slot

    def _checked(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> dict:
        """``weights`` if every target is an adaptable linear of matching shape, else ValueError."""
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        for path, (a, b, _) in weights.items():
            try:
                layer = self.model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"it targets {path}, which the base model lacks") from None
            base = layer.base_layer if isinstance(layer, MultiLoRALinear) else layer
            if not isinstance(base, LINEAR_KINDS) or base is head or path.endswith("lm_head"):
                raise ValueError(f"it targets {path}, a {type(base).__name__}; multi-LoRA serving adapts the "
                                 "model's linear layers (not the output head)")
            r = a.shape[0]
            if a.dim() != 2 or b.dim() != 2 or a.shape[1] != base.in_features or tuple(b.shape) != (base.out_features, r):
                raise ValueError(f"{path}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit the base layer "
                                 f"({base.in_features} -> {base.out_features}): was it trained on another model?")
        return weights
