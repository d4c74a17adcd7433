"""Training checkpoints: everything needed to continue a run bit for bit, written atomically.

``out_dir/checkpoints/step_000010/`` holds

- ``config.json`` + ``model.safetensors``: the weights in HF layout (written by
  :func:`llmkit.io.hf.save_hf`), so any checkpoint is also a loadable model;
- ``optimizer.safetensors``: every AdamW state tensor, keyed
  ``"<parameter name>:<state key>"`` (``exp_avg``, ``exp_avg_sq``, ``step``);
- ``rng.json``: each rank's Python, NumPy, torch CPU and CUDA generator states;
- ``trainer_state.json``, written last: step, token count, the
  :class:`~llmkit.train.config.TrainConfig` and model config, the data
  loader's position, the loss-scaler state, the optimizer's parameter groups
  (by name) and a SHA-256 of every other file.

Nothing is pickled: tensors go through safetensors and the rest is JSON. The
learning-rate schedule is a pure function of the step (see
:mod:`llmkit.train.schedule`), so it has no state to save.

The directory is built under a temporary name and renamed into place
(:func:`llmkit.io.atomic.atomic_dir`), so a crash or ``kill -9`` leaves either
the complete checkpoint or none, and the run loses at most the steps since
the previous one. Loading checks the format, every checksum and every
tensor name, and raises :class:`~llmkit.io.errors.CheckpointError` naming the
file at fault; it never falls back silently to an older checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmkit.config import ModelConfig
from llmkit.io.atomic import atomic_dir
from llmkit.io.errors import CheckpointError
from llmkit.io.hf import read_hf_config, read_hf_state_dict, read_json_object, save_hf

FORMAT = "llmkit-train-checkpoint-v1"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.json"
_STEP_DIR = re.compile(r"step_(\d+)")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out_dir/checkpoints`` as ``(step, path)``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    found = []
    for p in root.glob("step_*") if root.is_dir() else []:
        m = _STEP_DIR.fullmatch(p.name)
        if m and (p / STATE_FILE).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


# ----- RNG -----
def capture_rng() -> dict[str, Any]:
    """This process's generator states as JSON-able values."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ----- save -----
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, model_cfg: ModelConfig, model_state: dict[str, torch.Tensor],
                    optim_state: dict[str, Any], rng_states: list[dict[str, Any]], state: dict[str, Any]) -> None:
    """Write one checkpoint directory atomically (rank 0 only).

    Args:
        path: the ``step_NNNNNN`` directory; replaced if it exists.
        model_cfg: the model's config (for ``config.json``).
        model_state: full model state dict (CPU tensors, parameter names).
        optim_state: full optimizer state dict keyed by parameter name (``get_state_dict`` layout).
        rng_states: one :func:`capture_rng` per rank.
        state: JSON-able trainer state (step, configs, loader position ...); ``format``,
            ``optimizer_groups`` and ``files`` are added.
    """
    tensors = {f"{name}:{key}": value.detach().cpu().contiguous()
               for name, per_param in optim_state["state"].items() for key, value in per_param.items()}
    with atomic_dir(path) as tmp:
        save_hf(types.SimpleNamespace(cfg=model_cfg, state_dict=lambda: model_state,
                                      lm_head_tied=model_cfg.tie_word_embeddings), tmp)
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        (tmp / RNG_FILE).write_text(json.dumps(rng_states))
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        full = {"format": FORMAT, **state, "optimizer_groups": optim_state["param_groups"], "files": files}
        (tmp / STATE_FILE).write_text(json.dumps(full, indent=1))


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (0 keeps all) and leftovers of interrupted saves."""
    root = Path(out_dir) / "checkpoints"
    for leftover in root.glob(".step_*"):  # temp dirs of a save killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    found = list_checkpoints(out_dir)
    if keep_last:
        for _, p in found[:-keep_last]:
            shutil.rmtree(p)


# ----- load -----
@dataclass
class Checkpoint:
    """A verified checkpoint read into memory."""

    path: Path
    state: dict[str, Any]  # trainer_state.json
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, dict[str, torch.Tensor]]  # parameter name -> AdamW state
    rng_states: list[dict[str, Any]]


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint directory.

    Raises:
        CheckpointError: missing or unreadable state, a checksum mismatch, or a corrupt tensor file.
    """
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.exists():
        raise CheckpointError(f"{path} is not a training checkpoint (no {STATE_FILE})")
    state = read_json_object(state_file)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{state_file} has format {state.get('format')!r}, expected {FORMAT!r}")
    for name, digest in state["files"].items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its recorded SHA-256 "
                                  f"(delete {path} to resume from an older checkpoint)")
    _, raw = read_hf_config(path)
    model_state = read_hf_state_dict(path, raw.get("model_type"))
    try:
        flat = load_file(str(path / OPTIMIZER_FILE))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path / OPTIMIZER_FILE}: {e}") from None
    optim_state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, item = key.rpartition(":")
        optim_state.setdefault(name, {})[item] = value
    rng_states = json.loads((path / RNG_FILE).read_text())
    return Checkpoint(path, state, model_state, optim_state, rng_states)
