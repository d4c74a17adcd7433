#!/usr/bin/env bash
# GRPO on SmolLM2-135M-Instruct with LoRA on the built-in arithmetic task (docs/alignment.md, "Results").
# Constant learning rate, so `--resume --max_steps N` extends the run without changing what ran.
# Held-out accuracy before/after with 95% intervals: scripts/align_grpo_eval.py.
set -euo pipefail
OUT=${OUT:-out/align-grpo-smollm2}
STEPS=${STEPS:-90}
nice -n 10 .venv/bin/llmkit align grpo --model smollm2-135m-instruct --data arithmetic \
    --group_size 8 --batch_size 2 --temperature 0.8 --max_new_tokens 20 --beta 0.04 \
    --lr 3e-4 --schedule constant --warmup_steps 1 --max_steps "$STEPS" --save_every 10 \
    --eval_batches 2 --samples 2 --out_dir "$OUT" "$@"
