"""``llmkit train --sequence_parallel ring`` under torchrun: 2 ranks log the single-process losses.

The step-level parity (loss, gradients, validation on 2 and 4 ranks, ring and
Ulysses) is in test_sequence_parallel.py, which shares its process spawns;
this checks the CLI path end to end: the flag, the data every rank reads
alike, the padding of a sequence length the world size does not divide.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmkit.cli import main

pytestmark = pytest.mark.slow
OVERRIDES = dict(vocab_size=300, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32)


def _losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_torchrun_cli_equals_one_process(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"The king said to the queen {i}: good night, my lord." * 20 for i in range(40)))
    args = ["train", "--model", "tiny", "--data", str(text), "--seq_len", "31", "--batch_size", "2",
            "--max_steps", "2", "--warmup_steps", "0", "--device", "cpu", "--plot", "false", "--eval_every", "0",
            *(a for k, v in OVERRIDES.items() for a in (f"--model_overrides.{k}", str(v)))]
    assert main([*args, "--out_dir", str(tmp_path / "one")]) == 0
    script = tmp_path / "launch.py"
    script.write_text("import sys; from llmkit.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *args, "--out_dir", str(tmp_path / "sp"), "--sequence_parallel", "ring",
                           "--tokenizer", str(tmp_path / "one" / "tokenizer")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(tmp_path / "sp") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
