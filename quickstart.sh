#!/usr/bin/env bash
# The main job on embedded defaults: fetch SmolLM2-135M-Instruct and chat-complete a prompt.
# Extra arguments go to `llmkit generate` (e.g. --prompt "..." --max_new_tokens 64).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh
exec .venv/bin/llmkit generate --model smollm2-135m-instruct --prompt "What are three fun facts about octopuses?" "$@"
