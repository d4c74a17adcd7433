"""The README's model and cross-attention examples run as printed and do what their comments say."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(containing: str) -> str:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if containing in b]
    assert len(blocks) == 1, f"expected one README python block with {containing!r}, found {len(blocks)}"
    return blocks[0]


def test_cross_attention_example():
    torch.manual_seed(0)
    ns: dict = {}
    exec(_python_block("CrossAttentionBlock"), ns)
    xattn, memory, mask = ns["xattn"], ns["memory"], ns["mask"]
    assert ns["x"].shape == (2, 16, 512)
    x = torch.randn(2, 16, 512)
    noisy = memory.clone()
    noisy[1, 30:] = torch.randn(10, 768)  # only padding slots change
    with torch.no_grad():
        out, out_noisy = xattn(x, memory, memory_mask=mask), xattn(x, noisy, memory_mask=mask)
        unmasked = xattn(x, noisy)
    assert torch.allclose(out, out_noisy, atol=1e-6)
    assert not torch.allclose(out[1], unmasked[1], atol=1e-3)


def test_model_example_decodes_from_the_cache():
    torch.manual_seed(0)
    ns: dict = {}
    with torch.no_grad():
        exec(_python_block("setup_caches(max_batch_size=2"), ns)
        model, ids = ns["model"], ns["ids"]
        full = model(torch.cat([ids, ids[:, -1:]], 1))[:, -1]
    assert ns["logits"].shape == (2, 1, 32000)
    assert (ns["logits"][:, 0] - full).abs().max().item() <= 1e-4
