"""End-to-end refinement through the frozen model (dirjax/compress/e2e.py) on the tiny Llama:
it lowers the KL on held calibration tokens, keeps the codes and the bytes, resumes exactly,
runs data-parallel, is judged before any model loads and runs from a config."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dirjax
from dirjax.compress import compress, load_compressed, save_compressed
from dirjax.compress import vq as VQ
from dirjax.compress.cache import compression_key
from dirjax.compress.calib import collect
from dirjax.compress.e2e import flops_per_token, refine_through_model, windows
from dirjax.config import base_config, check_config
from dirjax.data import load_text
from dirjax.errors import ConfigError
from dirjax.evaluate import tokenize_stream
from dirjax.experiment import compression_options, run_experiment

TINY = Path(__file__).parent / "fixtures" / "tiny-llama"
SEQ, TRAIN, HELD = 32, 1024, 256
TIERS = ((16, 6), (8, 6), (4, 6), (2, 6))
FAST = dict(seq=SEQ, batch=4, tokens=TRAIN, held_tokens=HELD, progress=False)


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = dirjax.load_model(TINY)
    text = load_text("stdlib", "train")
    ids = tokenize_stream(tokenizer, text, TRAIN + HELD)
    calib = collect(model, tokenizer, text, n_hidden=256, max_length=64)
    table = np.asarray(model.embedding.table())
    embs = {"vq": compress(table, rate=16, method="vq", tiers=TIERS, iters=4, refit_iters=2,
                           refine_steps=0, **calib),
            "quant": compress(table, rate=8, method="quant")}
    return model, ids, embs


def held_kl(model, emb, ids) -> float:
    """KL(original || compressed) on the held windows, through the compressed model's own
    head (it reads the codes: not the refinement's dense-table path)."""
    wins = jnp.asarray(windows(ids[TRAIN:], SEQ))
    lp = jax.nn.log_softmax(model(wins), -1)
    lq = jax.nn.log_softmax(dirjax.swap_embedding(model, emb)(wins), -1)
    return float(jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), -1)))


def fixed_arrays(emb) -> dict:
    names = type(emb).CONTINUOUS
    from flax import nnx
    return {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(emb)) if str(p[-1]) not in names}


def trained_arrays(emb) -> dict:
    names = type(emb).CONTINUOUS
    from flax import nnx
    return {".".join(map(str, p)): np.asarray(v.get_value(), np.float32)
            for p, v in nnx.to_flat_state(nnx.state(emb)) if str(p[-1]) in names}


@pytest.fixture(scope="module")
def refined(setup):
    model, ids, embs = setup
    return {m: refine_through_model(model, e, ids, steps=12, lr=3e-3, **FAST)
            for m, e in embs.items()}


@pytest.mark.parametrize("method", ["vq", "quant"])
def test_refinement_lowers_the_kl_on_held_tokens_and_keeps_the_codes(setup, refined, method):
    model, ids, embs = setup
    base, out = embs[method], refined[method]
    before, after = held_kl(model, base, ids), held_kl(model, out, ids)
    assert after < 0.99 * before, (before, after)
    info = out.meta["e2e"]
    assert info["held_kl_after"] == pytest.approx(after, rel=1e-3)
    assert info["held_kl_before"] == pytest.approx(before, rel=1e-3)
    assert info["steps_run"] == 12 and info["tokens"] == TRAIN // SEQ * SEQ
    # the codes (and every other fixed array) are the very same; the continuous ones moved
    fixed, moved = fixed_arrays(base), fixed_arrays(out)
    assert fixed.keys() == moved.keys() and len(fixed) >= 3
    for k in fixed:
        np.testing.assert_array_equal(fixed[k], moved[k], err_msg=k)
    a, b = trained_arrays(base), trained_arrays(out)
    assert a.keys() == b.keys() and all(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["vq", "quant"])
def test_bytes_are_unchanged_and_the_store_round_trips(setup, refined, method, tmp_path):
    model, ids, embs = setup
    base, out = embs[method], refined[method]
    assert out.storage_bytes() == base.storage_bytes()
    assert [a.nbytes for a in out.export()[0].values()] == \
        [a.nbytes for a in base.export()[0].values()]
    for name, x in trained_arrays(out).items():      # representable at the stored width
        if name.endswith("mean"):
            assert out.mean[...].dtype == jnp.float32
        elif name.endswith("gain"):
            code = VQ.encode_log8(x, out.gain_range)
            np.testing.assert_array_equal(VQ.decode_log8(code, out.gain_range), x)
        else:
            np.testing.assert_array_equal(x.astype(np.float16).astype(np.float32), x)
    back = load_compressed(save_compressed(out, tmp_path / "e"))
    np.testing.assert_array_equal(np.asarray(back.table()), np.asarray(out.table()))
    wins = jnp.asarray(windows(ids[:128], SEQ))
    np.testing.assert_array_equal(np.asarray(dirjax.swap_embedding(model, back)(wins)),
                                  np.asarray(dirjax.swap_embedding(model, out)(wins)))


def test_a_killed_run_resumes_to_the_uninterrupted_result(setup, tmp_path):
    model, ids, embs = setup
    kw = dict(steps=6, lr=3e-2, checkpoint_every=1, **FAST)
    whole = refine_through_model(model, embs["vq"], ids, workdir=tmp_path / "a", **kw)
    part = refine_through_model(model, embs["vq"], ids, workdir=tmp_path / "b", stop_after=3,
                                **kw)
    assert part.meta["e2e"]["steps_run"] == 3
    resumed = refine_through_model(model, embs["vq"], ids, workdir=tmp_path / "b", **kw)
    assert resumed.meta["e2e"]["log"] == whole.meta["e2e"]["log"]
    a, b = trained_arrays(whole), trained_arrays(resumed)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=0, err_msg=k)


def test_one_device_and_four_give_the_same_refinement(setup):
    model, ids, embs = setup
    assert len(jax.devices()) == 4
    kw = dict(steps=3, lr=3e-2, **FAST)
    four = refine_through_model(model, embs["quant"], ids, **kw)
    one = refine_through_model(model, embs["quant"], ids, devices=jax.devices()[:1], **kw)
    assert four.meta["e2e"]["devices"] == 4 and one.meta["e2e"]["devices"] == 1
    np.testing.assert_allclose(four.meta["e2e"]["log"], one.meta["e2e"]["log"], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(four.table()), np.asarray(one.table()), atol=2e-3)


def test_flops_per_token_follow_the_formula_and_xla_agrees(setup, refined):
    model, _, _ = setup
    c = model.config
    f = refined["quant"].meta["e2e"]["flops_per_token"]
    v, d = c.vocab_size, c.hidden_size
    m = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
        __import__("flax").nnx.state(model, __import__("flax").nnx.Param)))   # tied: all
    a = 4 * c.num_layers * SEQ * c.num_heads * c.head_dim
    assert f == {**flops_per_token(model, SEQ), "xla_step": f["xla_step"]}
    assert f["step"] == 4 * m + 4 * v * d + 3 * a
    assert 0.5 < f["xla_step"] / f["step"] < 2.0, f


# ---------------------------------------------------------------------------- the config

def config(methods=("vq",), **options):
    c = base_config()
    c.model = str(TINY)
    c.methods, c.rates, c.outputs = methods, (16.0,), ("tied",)
    c.max_tokens, c.max_length, c.batch_size, c.progress = 256, 64, 2, False
    c.method_options = {m: dict(options) for m in methods}
    return c


E2E = {"steps": 3, "lr": 3e-2, "tokens": 512, "seq": 32, "batch": 4, "held_tokens": 128}


@pytest.mark.parametrize("methods,options,match", [
    (("vq",), {"e2e": {"stepz": 3}}, r"vq\.e2e: unknown field\(s\) stepz"),
    (("vq",), {"e2e": {"lr": -1.0}}, r"vq\.e2e\.lr must be a number > 0"),
    (("vq",), {"e2e": {"batch": 0}}, r"vq\.e2e\.batch must be an integer >= 1"),
    (("vq",), {"e2e": 5}, r"vq\.e2e must map fields"),
    (("quant",), {"e2e": {}}, r"quant\.e2e trains on calibration text: set "),
    (("svd",), {"e2e": {}}, r"svd\.e2e: method svd has no continuous parameters"),
])
def test_bad_e2e_options_are_one_line_before_any_model_loads(methods, options, match):
    c = config(methods, **options)
    c.model = "no-such-model"          # nothing is loaded: the check alone refuses it
    with pytest.raises(ConfigError, match=match) as e:
        check_config(c)
    assert "\n" not in str(e.value)


def test_options_fill_in_and_keys_without_e2e_are_unchanged():
    c = check_config(config(("vq",), e2e={"steps": 5}))
    assert c.method_options.vq.e2e.to_dict() == {"steps": 5, "lr": 1e-3, "tokens": 65536,
                                                 "seq": 256, "batch": 4,
                                                 "held_tokens": 8192, "seed": 0}
    plain = check_config(config(("vq",), tiers=TIERS))
    options = compression_options(plain, "vq")
    assert "e2e" not in options
    # the key of a vq compression without the option, as it was before the option existed
    assert compression_key("t", "vq", 16.0, options) == \
        "8561a5ca06d4263359d2a93f8d1ab5274bd6be14"


def test_a_config_with_e2e_runs_end_to_end_and_shares_its_base_compression(tmp_path):
    calibration = {"dataset": "stdlib", "split": "train"}
    c = config(("quant",), calibration=calibration, e2e=E2E)
    rows = run_experiment(c, tmp_path)
    q = rows[-1]
    assert q["method"] == "quant" and not q["reused"] and q["achieved_rate"] >= 16.0
    meta = json.loads((Path(q["embedding_dir"]) / "meta.json").read_text())
    info = meta["meta"]["e2e"]
    assert info["steps_run"] == 3 and info["held_kl_after"] < info["held_kl_before"]
    assert meta["meta"]["base_compress_seconds"] >= 0
    made = sorted(p.name for p in (tmp_path / "embeddings").iterdir())
    assert len(made) == 2 and not any(n.endswith(".train") for n in made)   # base + refined
    # without the option: the base compression, reused from the cache, and a worse row
    base = run_experiment(config(("quant",), calibration=calibration), tmp_path)[-1]
    assert base["reused"] and base["embedding_dir"] != q["embedding_dir"]
    assert base["value"] > q["value"]
    again = run_experiment(c, tmp_path)[-1]
    assert again["cached"] and again["value"] == q["value"]
