"""`llmkit.finetune`: fine-tuning a pretrained chat model on conversations: full, LoRA, DoRA, QLoRA, prefix or prompt tuning.

``finetune(FinetuneConfig(...))`` (CLI: ``llmkit finetune``) is glue between
three parts that already exist: a loader (:func:`llmkit.generate.load_model_and_tokenizer`,
a GGUF file or an HF directory), the adapters of :mod:`llmkit.peft`, and the
:class:`~llmkit.train.Trainer` running SFT (loss on assistant tokens only).
The package holds the config (``config.py``), the methods put on the base
model (``methods.py``) and the run with its report (``run.py``). The run is:

1. load the base model (fp32) and its tokenizer; for ``qlora`` quantise every
   linear but the head to NF4 -- the model training starts from;
2. greedy answers to the first ``samples`` validation questions ("before");
3. attach the method (``full`` unfreezes everything), print the trainable share;
4. validation loss with the adapters disabled ("before"), train, validation
   loss at the last step ("after"), the same answers again;
5. write the result (below) and ``finetune.json`` (config, counts, losses, answers).

Outputs in ``out_dir``:

- ``adapter/``: every method but ``full``, in peft's format (the Trainer's export,
  :func:`llmkit.peft.save_adapter`), which ``llmkit chat --model BASE --adapter
  out_dir/adapter``, :func:`llmkit.peft.load_adapter` and peft load; prefix and
  prompt tuning are stored as peft stores them, as the trained virtual-token table.
- ``model/``: for ``full`` (the Trainer's export), or with ``merge`` (LoRA family),
  the model in HF layout with the tokenizer beside it (``llmkit chat --model out_dir/model``).
  A merged QLoRA model holds the dequantised NF4 base plus the update.
- ``train/``: the Trainer's metrics, curves and checkpoints (for ``resume``).

It runs in one process (not under torchrun): the outputs are written by it alone.

Defaults. ``target_modules`` is every linear layer but the head ("all-linear"):
the QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314, sec. 4) found LoRA on
all linears necessary to match full fine-tuning, while q/v-only LoRA falls
short; on SmolLM2-135M at r=16 that is 4.9M parameters (3.5%) against 1.8M for
q/k/v/o, a small price. The learning rate defaults per method (``METHOD_LR``):
a rate that suits 5M fresh adapter weights (1e-3) wrecks a full fine-tune
(2e-5), and the 20 virtual tokens of prompt tuning need far more (3e-2, as in
peft's examples).
"""
from llmkit.finetune.config import LORA_METHODS, METHOD_LR, VIRTUAL_METHODS, FinetuneConfig
from llmkit.finetune.methods import attach, prepare_base
from llmkit.finetune.run import finetune

__all__ = ["LORA_METHODS", "METHOD_LR", "VIRTUAL_METHODS", "FinetuneConfig", "attach", "finetune", "prepare_base"]
