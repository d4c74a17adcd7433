"""Kernel build names: one per torch version and CPU feature set, so a shared build cache never hands
a host a library compiled for instructions it lacks."""
import torch

from llmkit import native


def test_build_name_carries_torch_version_and_cpu():
    name = native.build_name("llmkit_k", "abc")
    assert name.startswith("llmkit_k_") and name.endswith("_abc") and name.isidentifier()
    assert torch.__version__.replace(".", "_").replace("+", "_") in name
    assert native.cpu_fingerprint() in name


def test_fingerprint_follows_the_cpu_flags():
    def info(flags: str) -> str:
        return f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\nbugs\t\t: sysret_ss_attrs\n"

    avx2 = native.fingerprint(info("fpu sse2 avx2 fma"))
    assert native.fingerprint(info("fma avx2 fpu sse2")) == avx2  # the order of flags does not matter
    assert native.fingerprint(info("fpu sse2 avx2 fma avx512f avx512_bf16")) != avx2
    assert native.fingerprint("Features\t: fp asimd sve\n") != native.fingerprint("Features\t: fp asimd\n")
