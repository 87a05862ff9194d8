import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dirjax.compress import autoencoder as ae


def test_loss_on_a_hand_computed_toy_case():
    x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    x_hat = jnp.array([[1.0, 1.0], [0.0, 2.0]])
    # row 0: cos = 1/sqrt(2), |diff| = (0, 1); row 1: exact, cos = 1, |diff| = (0, 0)
    for alpha in (1.0, 0.5):
        rec = ((0 + 1e-10) ** alpha + 1.0 + 2 * (1e-10) ** alpha) / 4
        want = 0.2 * (1 - 2 ** -0.5) / 2 + 0.3 * rec
        loss, cos = ae.direction_loss(x_hat, x, alpha, w_cos=0.2, w_rec=0.3)
        assert float(loss) == pytest.approx(want, rel=1e-6)
        assert float(cos) == pytest.approx((2 ** -0.5 + 1) / 2, rel=1e-6)


def test_row_weights_mask_rows_out():
    x = jnp.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    x_hat = jnp.array([[1.0, 1.0], [0.0, 2.0], [-5.0, 1.0]])
    masked, _ = ae.direction_loss(x_hat, x, 0.7, jnp.array([1.0, 1.0, 0.0]))
    plain, _ = ae.direction_loss(x_hat[:2], x[:2], 0.7)
    assert float(masked) == pytest.approx(float(plain), rel=1e-6)


def test_default_weights_are_the_papers():
    assert ae.W_COS == pytest.approx(0.1995) and ae.W_REC == 0.0025


def test_alpha_anneals_over_two_thirds_then_holds():
    a = [ae.alpha_at(e, 30) for e in range(30)]
    assert a[0] == 1.0 and a[10] == pytest.approx(0.55) and a[20] == pytest.approx(0.1)
    assert all(x == pytest.approx(0.1) for x in a[20:])
    assert all(b < c for b, c in zip(a[1:21], a[:20]))


def test_lr_halves_every_four_epochs():
    assert [ae.lr_at(e) for e in (0, 3, 4, 8, 11)] == [1e-3, 1e-3, 5e-4, 2.5e-4, 2.5e-4]


def test_autoencoder_shapes_and_linear_default():
    m = ae.DirectionAutoEncoder(10, 3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 10)), jnp.float32)
    assert m.encode(x).shape == (5, 3) and m(x).shape == (5, 10)
    # linear: f(a + b) = f(a) + f(b) - f(0)
    z = jnp.zeros_like(x)
    np.testing.assert_allclose(m(x + x) - m(x), m(x) - m(z), atol=1e-5)
    deep = ae.DirectionAutoEncoder(10, 3, hidden=(7,), activation="tanh", rngs=nnx.Rngs(0))
    assert deep.encode(x).shape == (5, 3) and len(deep.encoder) == 2


def test_encoder_stores_out_in_with_torch_linear_values():
    """The encoder's `[out, in]` kernel holds the transposed values an `[in, out]` nn.Linear-style
    layer draws from the same keys, and computes the same function."""
    enc = ae.LinearOutIn(6, 3, nnx.Rngs(5))
    ref = ae.torch_linear(6, 3, nnx.Rngs(5))
    assert enc.kernel[...].shape == (3, 6)
    np.testing.assert_array_equal(enc.kernel[...], ref.kernel[...].T)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 6)), jnp.float32)
    np.testing.assert_allclose(enc(x), ref(x), rtol=1e-6, atol=1e-6)


def test_torch_style_init_bounds():
    m = ae.DirectionAutoEncoder(100, 4, rngs=nnx.Rngs(0))
    k = np.asarray(m.encoder[0].kernel[...])
    assert np.abs(k).max() <= 0.1 and np.abs(k).max() > 0.09  # U(-1/sqrt(100), 1/sqrt(100))


@pytest.mark.slow
def test_minilm_table_at_rate_10_ae_beats_svd_on_direction():
    """The paper's claim on a real table: at the same rank the direction AE keeps the rows'
    directions better than SVD (MiniLM-L6 30522 x 384, rate 10 -> rank 37)."""
    import dirjax
    from dirjax.compress import compress

    table = dirjax.load_model("minilm-l6")[0].embedding.table()
    assert table.shape == (30522, 384)
    svd = compress(table, rate=10, method="svd")
    ae_emb = compress(table, rate=10, method="ae", progress=False)
    assert svd.rank == ae_emb.rank == 37
    print(f"\nMiniLM rate 10 (k=37): cos_mean AE {ae_emb.metrics['cos_mean']:.4f} "
          f"SVD {svd.metrics['cos_mean']:.4f}; cos_p5 AE {ae_emb.metrics['cos_p5']:.4f} "
          f"SVD {svd.metrics['cos_p5']:.4f}")
    assert ae_emb.metrics["cos_mean"] > svd.metrics["cos_mean"]
