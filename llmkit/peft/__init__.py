"""Parameter-efficient fine-tuning: LoRA/DoRA/PiSSA, QLoRA (NF4), IA3, bottleneck adapters, virtual tokens.

Every method wraps what it adapts and keeps the original as ``base_layer`` or
``base_model`` (see ``base.py``), so the same helpers freeze, count, disable,
merge and save all of them. Adapter files use peft's format (``format.py``).

- ``lora.py`` / ``apply.py``: LoRA, rsLoRA, DoRA, PiSSA on linear, embedding and Conv2d layers.
- ``nf4.py`` / ``qlora.py``: NF4 with double quantisation, ``Linear4bit``, ``quantize_model_4bit``.
- ``ia3.py``: IA3 rescaling vectors.
- ``adapter.py``: Houlsby / Pfeiffer bottleneck adapters.
- ``prompt.py``: prompt tuning and P-tuning; ``prefix.py``: prefix tuning.
"""
from llmkit.peft.adapter import BottleneckAdapter, apply_bottleneck
from llmkit.peft.apply import (apply_lora, disable_adapters, merge_and_unload, merge_lora, trainable_parameters,
                               unmerge_lora)
from llmkit.peft.format import load_adapter, save_adapter
from llmkit.peft.ia3 import IA3Linear, apply_ia3
from llmkit.peft.lora import LoRAConv2d, LoRAEmbedding, LoRALinear
from llmkit.peft.nf4 import NF4_CODE, dequantize_nf4, quantize_nf4
from llmkit.peft.prefix import PrefixTuningLM, apply_prefix_tuning
from llmkit.peft.prompt import VirtualTokenLM, apply_prompt_tuning
from llmkit.peft.qlora import Linear4bit, quantize_model_4bit

__all__ = [
    "BottleneckAdapter", "IA3Linear", "Linear4bit", "LoRAConv2d", "LoRAEmbedding", "LoRALinear", "NF4_CODE",
    "PrefixTuningLM", "VirtualTokenLM", "apply_bottleneck", "apply_ia3", "apply_lora", "apply_prefix_tuning",
    "apply_prompt_tuning", "dequantize_nf4", "disable_adapters", "load_adapter", "merge_and_unload", "merge_lora",
    "quantize_model_4bit", "quantize_nf4", "save_adapter", "trainable_parameters", "unmerge_lora",
]
