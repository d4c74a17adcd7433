"""Two torchrun processes with batch b take the same steps as one process accumulating 2 x b.

Runs ``python -m torch.distributed.run --nproc_per_node 2`` on the CPU (gloo) with a tiny model.
DDP must match to float rounding; FSDP2 is run as 2 steps, then ``--resume`` to 4, so its sharded
optimizer state also goes through a checkpoint.
"""
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llmkit.cli import main

from .helpers import TINY

pytestmark = pytest.mark.slow
LAUNCH = "import sys; from llmkit.cli import main; sys.exit(main(sys.argv[1:]))"


def _torchrun(tmp_path, *args: str) -> None:
    script = tmp_path / "llmkit_main.py"
    script.write_text(LAUNCH)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def test_two_ranks_equal_one_rank_with_accumulation(tmp_path, byte_shards):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "tiny", "model_overrides": TINY, "data": str(byte_shards / "train"), "seq_len": 16,
        "max_steps": 4, "schedule": "constant", "warmup_steps": 0, "device": "cpu", "plot": False,
        "save_every": 2, "eval_every": 0}))
    one, ddp, fsdp = tmp_path / "one", tmp_path / "ddp", tmp_path / "fsdp"
    assert main(["train", str(recipe), "--batch_size", "2", "--grad_accum", "2", "--out_dir", str(one)]) == 0
    _torchrun(tmp_path, str(recipe), "--batch_size", "2", "--out_dir", str(ddp))
    _torchrun(tmp_path, str(recipe), "--batch_size", "2", "--out_dir", str(fsdp), "--parallel", "fsdp",
              "--max_steps", "2")
    _torchrun(tmp_path, "--resume", str(fsdp), "--max_steps", "4")
    ref = _weights(one)
    for out in (ddp, fsdp):
        got = _weights(out)
        assert got.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=f"{out.name}: {name}")
    first = ref["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(first, load_file(str(one / "checkpoints" / "step_000002" / "model.safetensors"))[
        "model.layers.0.self_attn.q_proj.weight"])  # the weights did move between the checkpoints
