"""Fine-tuning loop on the tiny random BERT: embedding treatments, heads, mesh, resume, bf16."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from dirjax import finetune as ft
from dirjax import load_model, swap_embedding
from dirjax.data import glue
from dirjax.embedding import LowRankEmbedding
from dirjax.errors import ConfigError
from dirjax.models.heads import SequenceHead, SpanHead

TINY_BERT = Path(__file__).parent / "fixtures" / "tiny-bert"
ONE = Mesh(jax.devices()[:1], ("data",))


def tiny(rank: int | None = 8):
    """The tiny BERT, its embedding replaced by a rank-`rank` SVD (None: dense original)."""
    model, tok = load_model(TINY_BERT)
    if rank is None:
        return model, tok
    u, s, vt = np.linalg.svd(np.asarray(model.embedding.table()), full_matrices=False)
    emb = LowRankEmbedding(u[:, :rank] * s[:rank], vt[:rank],
                           np.full(vt.shape[1], 0.01, np.float32))
    return swap_embedding(model, emb), tok


def _rows_types(n=8, t=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = [list(rng.integers(5, 1000, t - i % 3)) for i in range(n)]
    return rows, [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) for r in rows]


def batch(n=8, t=12, seed=0, **extra):
    rows, types = _rows_types(n, t, seed)
    return ft.pad_batch(rows, types, n, 16, **extra)


def one_step(head, loss, b, treatment="frozen_codes", mesh=ONE, **cfg):
    cfg = ft.TrainConfig(**{"lr": 1e-3, "batch_size": len(b["ids"]),
                            "micro_batch_size": len(b["ids"]), "epochs": 1,
                            "embedding": treatment, **cfg})
    return ft.fit(head, loss, lambda epoch: iter([b]), lambda predict: {}, cfg, updates=1,
                  seed=0, mesh=mesh, log=lambda m: None)


def snapshot(module):
    return {".".join(map(str, p)): np.array(v[...]) for p, v in nnx.iter_graph(module)
            if isinstance(v, nnx.Param)}


@pytest.mark.parametrize("treatment", ["frozen_codes", "frozen", "full"])
def test_embedding_treatments(treatment):
    model, _ = tiny()
    head = SequenceHead(model, 2, rngs=nnx.Rngs(0))
    emb = head.backbone.embedding
    before, rest = snapshot(emb), snapshot(head.backbone.layers[0])
    cls_before = np.array(head.classifier.kernel[...])
    hist = one_step(head, ft.sequence_loss(False), batch(labels=np.arange(8) % 2), treatment)
    assert np.isfinite(hist[0]["train_loss"])
    after = snapshot(head.backbone.embedding)
    same = {k: np.array_equal(before[k], after[k]) for k in before}
    expect = {"frozen_codes": {"codes": True, "weight": False, "bias": False},
              "frozen": {"codes": True, "weight": True, "bias": True},
              "full": {"codes": False, "weight": False, "bias": False}}[treatment]
    assert same == expect  # frozen arrays bit-identical, trained ones moved
    assert not np.array_equal(cls_before, head.classifier.kernel[...])
    assert all(not np.array_equal(v, snapshot(head.backbone.layers[0])[k]) for k, v in rest.items())


def test_frozen_codes_on_a_dense_table_trains_it_as_full():
    model, _ = tiny(rank=None)
    head = SequenceHead(model, 2, rngs=nnx.Rngs(0))
    graphdef, trainable, frozen = ft.split(head, "frozen_codes")
    assert ft.count(trainable) == ft.count(ft.split(head, "full")[1])
    assert ft.count(ft.split(head, "frozen")[1]) == ft.count(trainable) - 1000 * 64
    with pytest.raises(ConfigError):
        ft.split(head, "frozen_decoder")


def test_regression_head_one_step():
    model, _ = tiny()
    head = SequenceHead(model, 1, rngs=nnx.Rngs(1), pooling="cls")
    b = batch(labels=np.linspace(0, 5, 8).astype(np.float32))
    k0 = np.array(head.classifier.kernel[...])
    hist = one_step(head, ft.sequence_loss(True), b)
    # the zero-initialised bias starts at 0 and predictions ~0: MSE ~ mean(y^2) = 9.64
    assert hist[0]["train_loss"] == pytest.approx(np.mean(np.linspace(0, 5, 8) ** 2), rel=0.1)
    assert not np.array_equal(k0, head.classifier.kernel[...])
    assert head(jnp.asarray(b["ids"]), jnp.asarray(b["mask"])).shape == (8, 1)


def test_span_head_one_step():
    model, _ = tiny()
    head = SpanHead(model, rngs=nnx.Rngs(0))
    b = batch(start=np.full(8, 2), end=np.full(8, 4))
    s, e = head(jnp.asarray(b["ids"]), jnp.asarray(b["mask"]), jnp.asarray(b["token_type_ids"]))
    assert s.shape == e.shape == b["ids"].shape
    q0 = np.array(head.qa_outputs.kernel[...])
    hist = one_step(head, ft.span_loss, b)
    # near-uniform logits over the 10..12 real tokens of each row at init: CE ~ log(11)
    assert hist[0]["train_loss"] == pytest.approx(np.log(11), rel=0.15)
    assert not np.array_equal(q0, head.qa_outputs.kernel[...])


def test_four_devices_equal_one_device():
    """The sharded step's update equals the 1-device one. Plain SGD, so the update is the
    gradient itself (Adam's first step, ~lr * sign(g), would amplify float noise in
    gradients that are exactly 0 in theory, such as the attention key bias)."""
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    assert len(jax.devices()) == 4
    model, _ = tiny()
    head = SequenceHead(model, 3, rngs=nnx.Rngs(0))
    graphdef, trainable, frozen = ft.split(head, "frozen_codes")
    tx = optax.sgd(1.0)
    step = ft.make_step(graphdef, ft.sequence_loss(False), tx)
    b = batch(labels=np.arange(8) % 3)
    out = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh = Mesh(devices, ("data",))
        rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        t, f = jax.device_put((trainable, frozen), rep)
        new, _, loss = step(t, jax.device_put(tx.init(t), rep), f, jax.device_put(b, data),
                            jax.random.key(0))
        assert len(jax.tree.leaves(new)[0].sharding.device_set) == len(devices)
        out.append((float(loss), jax.tree.map(np.asarray, new)))
    assert out[0][0] == pytest.approx(out[1][0], abs=1e-6)
    for x, y in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(x, y, atol=1e-5)
    # every array the task uses received a gradient; the unused MLM head got none. The
    # attention key bias is left out: it shifts all scores of a query equally, so its
    # gradient is 0 in exact arithmetic and float noise, or exactly 0, in practice.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(trainable)[0]]
    for path, x, y in zip(paths, jax.tree.leaves(out[0][1]), jax.tree.leaves(trainable)):
        if "['key']['bias']" in path:
            continue
        assert (np.abs(x - y).max() > 0) == ("mlm" not in path), path


@pytest.mark.slow  # several compiles: ~20 s unloaded, minutes on a busy CPU
def test_fit_on_four_devices_matches_one_device_loss():
    losses = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        model, _ = tiny()
        head = SequenceHead(model, 3, rngs=nnx.Rngs(0))
        b = batch(labels=np.arange(8) % 3)
        losses.append(one_step(head, ft.sequence_loss(False), b, mesh=Mesh(devices, ("data",)))[0])
    assert losses[0]["train_loss"] == pytest.approx(losses[1]["train_loss"], abs=1e-6)


def test_bf16_compute_keeps_fp32_master_weights():
    model, _ = tiny()
    head = SequenceHead(model, 2, rngs=nnx.Rngs(0))
    hist = one_step(head, ft.sequence_loss(False), batch(labels=np.arange(8) % 2),
                    compute_dtype="bfloat16")
    assert np.isfinite(hist[0]["train_loss"])
    assert head.classifier.kernel[...].dtype == jnp.float32
    assert head.backbone.embedding.weight[...].dtype == jnp.float32


def test_optimizer_schedule_and_accumulation():
    cfg = ft.TrainConfig(lr=1.0, batch_size=4, micro_batch_size=2, warmup_ratio=0.25)
    assert cfg.accumulation == 2
    tx = ft.optimizer(ft.TrainConfig(lr=1.0, warmup_ratio=0.25, weight_decay=0.0,
                                     max_grad_norm=1e9), updates=8)
    # with Adam the first update is -lr_t * sign(g); lr ramps 0 -> 1 over 2 steps, then decays
    p = {"w": jnp.zeros(())}
    state = tx.init(p)
    steps = []
    for _ in range(8):
        upd, state = tx.update({"w": jnp.ones(())}, state, p)
        steps.append(-float(upd["w"]))
    np.testing.assert_allclose(steps, [0, 0.5, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6], rtol=1e-4)
    with pytest.raises(ConfigError):
        ft.TrainConfig(batch_size=32, micro_batch_size=5).accumulation


def test_gradient_accumulation_equals_one_big_batch():
    results = []
    for micro in (8, 4):
        model, _ = tiny()
        head = SequenceHead(model, 2, rngs=nnx.Rngs(0), dropout_rate=0.0)
        b = batch(labels=np.arange(8) % 2)
        halves = [{k: v[i:i + micro] for k, v in b.items()} for i in range(0, 8, micro)]
        # a large Adam eps: the first Adam step is ~lr * sign(g), which would turn float noise
        # in (theoretically) zero gradients into full-size, sign-random updates
        cfg = ft.TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=micro, epochs=1,
                             adam_eps=1e-3)
        ft.fit(head, ft.sequence_loss(False), lambda e: iter(halves), lambda p: {}, cfg,
               updates=1, seed=0, mesh=ONE, log=lambda m: None)
        results.append(snapshot(head))
    for k in results[0]:
        np.testing.assert_allclose(results[0][k], results[1][k], atol=2e-6, err_msg=k)


def test_batches_pad_and_group_by_length():
    rows = [[1] * n for n in (3, 17, 5)]
    b = ft.pad_batch(rows, [[0] * n for n in (3, 17, 5)], 4, 16, labels=np.array([1, 0, 1]))
    assert b["ids"].shape == (4, 32) and list(b["weight"]) == [1, 1, 1, 0]
    assert list(b["mask"].sum(1)) == [3, 17, 5, 0] and list(b["labels"]) == [1, 0, 1, 0]
    lengths = np.random.default_rng(0).integers(1, 100, 1000)
    order = ft.length_grouped_order(lengths, 10, np.random.default_rng(1), group=5)
    assert sorted(np.concatenate(order)) == list(range(1000))
    spread = np.mean([np.ptp(lengths[o]) for o in order])
    assert spread < 0.3 * np.ptp(lengths)   # batches hold similar lengths


def glue_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    good, bad = ["good", "great", "fine"], ["bad", "awful", "poor"]
    labels = rng.integers(0, 2, n)
    text = [" ".join(rng.choice(good if y else bad, 3)) + " movie" for y in labels]
    return glue.Examples(text, None, labels)


@pytest.mark.slow  # several compiles: ~20 s unloaded, minutes on a busy CPU
def test_glue_resume_equals_uninterrupted(tmp_path):
    cfg = ft.TrainConfig(lr=1e-3, batch_size=16, micro_batch_size=16, epochs=2, dropout=0.0)
    ex = glue_data()

    def train(ckpt_dir, fail_in_epoch=None):
        model, tok = tiny()
        real, calls = ft.length_grouped_order, []
        if fail_in_epoch is not None:  # simulate a kill at the start of an epoch

            def dying(*args, **kw):
                calls.append(1)
                if len(calls) > fail_in_epoch:
                    raise KeyboardInterrupt
                return real(*args, **kw)
            ft.length_grouped_order = dying
        try:
            hist = ft.finetune_glue(model, tok, "sst2", cfg, train=ex, dev={"dev": ex}, seed=0,
                                    max_length=16, mesh=ONE, ckpt_dir=ckpt_dir, log=lambda m: None)
        finally:
            ft.length_grouped_order = real
        return hist, model

    full_hist, full_model = train(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", fail_in_epoch=1)
    resumed_hist, resumed_model = train(tmp_path / "b")
    assert [h["dev/accuracy"] for h in resumed_hist] == [h["dev/accuracy"] for h in full_hist]
    assert resumed_hist[1]["train_loss"] == pytest.approx(full_hist[1]["train_loss"], abs=1e-6)
    a, b = snapshot(full_model), snapshot(resumed_model)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    assert len(full_hist) == 2 and 0.0 <= full_hist[-1]["dev/accuracy"] <= 1.0


def test_finetune_squad_tiny():
    from dirjax.data import squad
    model, tok = tiny()
    ctx = "The quick brown fox jumps over the lazy dog near the river bank at noon."
    qa = [("who jumps?", "brown fox"), ("where?", "the river bank"), ("when?", "noon"),
          ("over what?", "the lazy dog")]
    ex = [squad.Example(str(i), q, ctx, [a], ctx.index(a)) for i, (q, a) in enumerate(qa)]
    cfg = ft.TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=4, epochs=1, pad_multiple=16)
    hist = ft.finetune_squad(model, tok, cfg, train=ex, dev=ex, seed=0, max_length=32,
                             stride=8, mesh=ONE, log=lambda m: None)
    assert set(hist[0]) >= {"exact_match", "f1", "train_loss"}
    assert 0.0 <= hist[0]["exact_match"] <= hist[0]["f1"] <= 100.0


def test_mean_pooling_reads_only_real_tokens():
    """pooling="mean" (sentence-transformers checkpoints): the mean of the unpadded states, so
    extra padding leaves the logits unchanged and they equal the classifier of a hand mean."""
    model, _ = tiny(rank=None)
    head = SequenceHead(model, 3, pooling="mean", rngs=nnx.Rngs(0))
    b16, b32 = batch(), ft.pad_batch(*_rows_types(), 8, 32)
    ids, mask = jnp.asarray(b16["ids"]), jnp.asarray(b16["mask"])
    out16 = head(ids, mask, jnp.asarray(b16["token_type_ids"]))
    out32 = head(jnp.asarray(b32["ids"]), jnp.asarray(b32["mask"]),
                 jnp.asarray(b32["token_type_ids"]))
    np.testing.assert_allclose(out16, out32, atol=1e-5)
    h = np.asarray(model.encode(ids, mask, jnp.asarray(b16["token_type_ids"])))
    m = b16["mask"][..., None]
    want = head.classifier((h * m).sum(1) / m.sum(1))
    np.testing.assert_allclose(out16, want, atol=1e-5)
    assert not np.allclose(out16, SequenceHead(model, 3, pooling="cls", rngs=nnx.Rngs(0))(
        ids, mask, jnp.asarray(b16["token_type_ids"])), atol=1e-3)
    with pytest.raises(ConfigError):
        SequenceHead(model, 3, pooling="max", rngs=nnx.Rngs(0))
