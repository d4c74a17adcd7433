#!/usr/bin/env bash
# The main job on embedded defaults: the speedrun (Shakespeare -> BPE tokenizer -> pretraining ->
# validation bits per byte -> chat SFT -> runs/speedrun-*/report.md), about 10 minutes on 2 CPU cores.
# Extra arguments go to `llmkit speedrun` (e.g. --minutes 3, --data austen, --out runs/mine).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh
exec .venv/bin/llmkit speedrun "$@"
