"""Kernel build names: one per torch version and CPU feature set, so a shared build cache never hands
a host a library compiled for instructions it lacks."""
from pathlib import Path

import torch

from llmkit import native


def test_build_name_carries_torch_version_and_cpu(monkeypatch):
    name = native.build_name("llmkit_k", "abc")
    assert name.startswith("llmkit_k_") and name.endswith("_abc") and name.isidentifier()
    assert torch.__version__.replace(".", "_").replace("+", "_") in name
    assert native.cpu_fingerprint() in name


def test_fingerprint_follows_the_cpu_flags(monkeypatch, tmp_path):
    def fingerprint(flags: str) -> str:
        native.cpu_fingerprint.cache_clear()
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        real = Path.read_text
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(info) if str(self) == "/proc/cpuinfo"
                            else real(self, *a, **k))
        try:
            return native.cpu_fingerprint()
        finally:
            monkeypatch.undo()
            native.cpu_fingerprint.cache_clear()

    avx2 = fingerprint("fpu sse2 avx2 fma")
    assert fingerprint("fma avx2 fpu sse2") == avx2  # the order of flags does not matter
    assert fingerprint("fpu sse2 avx2 fma avx512f avx512_bf16") != avx2
