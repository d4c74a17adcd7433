"""Kernel builds: names per torch version and CPU feature set, so a shared build cache never hands
a host a library compiled for instructions it lacks; a failed build warns so callers keep their fallback."""
import pytest
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


def test_a_library_that_does_not_build_warns_and_reports_false(tmp_path):
    source = tmp_path / "broken.cpp"
    source.write_text("this is not C++\n")
    with pytest.warns(RuntimeWarning, match="(?s)^the test kernel could not be built .*; using the fallback$"):
        assert native.build("llmkit_test_broken", [source], [], "the test kernel",
                            "using the fallback") is False
