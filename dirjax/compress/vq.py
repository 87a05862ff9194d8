"""Vector-quantised embedding tables at 2 bits per entry and below (the `vq` method).

A table `[V, d]` is centred (mean row), rotated by a random orthogonal R (a seed), and each
row y_v is split into its norm and its direction ("direction is what you need": the norm is
stored apart, in a few bits, and only the direction is coded). The direction, scaled to unit
variance per entry (u_v = y_v sqrt(d) / |y_v|), is cut into groups of g entries and each group
is replaced by the index of its nearest codeword in a codebook `[2^b, g]` learnt by k-means
and shared by all rows of the row's *tier*:

    y_hat[v] = gain[v] * concat_j C_t[codes_t[v', j]]      (t = tier[v], v' = v's index in t)
    table    = y_hat @ R^T + mean

Tiers are (g, b) pairs; a tier spends b/g bits per entry (defaults: (16,8) 0.5, (8,8) 1,
(4,8) 2, (2,8) 4 bits per entry). With calibration `counts`, each row's tier is
chosen by a Lagrangian allocation minimising the frequency-weighted squared error under the
byte budget (frequent rows fine codes, the long tail coarse ones); without, by squared error
alone. With calibration `hidden` states, codes are chosen by LDLQ (GPTQ with vector codes:
each group's error pushed onto the groups not yet coded) against
H = (1 - a) I/d + a E[h h^T]/tr (a = head_weight), the tied head's logit error mixed with
the input side's squared error.

gain: "norm" stores |y_v| / |q_v| (the reconstructed row keeps the row's norm), "ls" the
least-squares gain, "hls" the least-squares gain in the H metric (with hidden states: the
output-aware refinement of each row's gain with its codes fixed), stored in 8 bits on a log
scale (norm="log8") or fp16 ("fp16"); norm="none" is plain vector codes: k-means on the raw
rotated rows, no gain stored.

Bytes, everything counted: codes packed at b bits (ceil per tier), codebooks fp16
(2^b * g * 2 per tier), per-row tier ids (ceil(log2 T) bits each when T > 1), gains (1 byte a
row + 8 for the log range, or 2 bytes a row), the mean row (4d), the seed (8).
rate = V * d * 4 / storage_bytes().

Registered as `vq` (vq_method; defaults = what was kept: norm log8, gain norm, floor 0.25,
head_weight 0.9, ldlq_rounds 2, refine_steps 60). Measured with bench/vq_explore.py on SmolLM2-135M, input AND
tied head replaced, first 4,096 tokens of WikiText-2 raw test (original 30.64), calibration on
WikiText-2 valid; tied ppl at rate 16 / rate 32 (quant_gptq: 40.41 / refused):
    norm apart, nearest codes (no hidden)            44.83 / 141.67
    + LDLQ, head_weight 0.5                          36.78 /  59.97
    head_weight 0.9 (each row below changes this one) 35.97 /  56.47
    plain vector codes (norm="none"), hw 0.9         36.82 /  56.50   (norm apart: kept)
    gain "hls" instead of "norm" ("ls", hw 0.5)      36.38 /  56.76 (36.89 vs 36.78) dropped
    ldlq_rounds 2 (codebook refit on LDLQ targets)   35.46 /  55.88
    floor 0.25 (0.1) instead of 1                        - /  53.63 (56.21)
    + tiers at 1.5 and 3 b/e (12-bit books), hls     35.84 /    -   (20 min to compress) dropped
    defaults without refinement (hw 0.9, 2 rounds, floor 0.25)  - /  50.86
    + 60 steps of KL refinement of codebooks and gains         - /  44.47 (orig head 36.00)
16,384 tokens (original 28.82), the defaults (bench/vq_explore.py --presets vq --tokens 16384
--orig): rate 16 tied 33.07 (1.15x), original head 30.46; rate 32 tied 42.52 (1.48x), original
head 34.68; ~450 s to compress each on a shared, loaded 2-core CPU (~110 s + ~180 s refinement
when less loaded).
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dirjax.compress.quantize import QuantizeError, random_rotation, unrotate
from dirjax.embedding import Described
from dirjax.errors import ConfigError, DataError

DEFAULT_TIERS = ((16, 8), (8, 8), (4, 8), (2, 8))
GAINS = ("log8", "fp16", "none")
CHUNK = 8192           # vectors per k-means assignment chunk (bounds the [chunk, K] distances)


# ----------------------------------------------------------------------------- bytes
def _tier_bits(n_tiers: int) -> int:
    return 0 if n_tiers <= 1 else math.ceil(math.log2(n_tiers))


def overhead_bytes(v: int, d: int, tiers, *, gain: str, center: bool, rotate: bool) -> int:
    """Everything but the codes: codebooks (fp16), tier ids, gains, mean row, seed."""
    books = sum((2 ** b) * g * 2 for g, b in tiers)
    ids = (v * _tier_bits(len(tiers)) + 7) // 8
    gains = {"log8": v + 8, "fp16": 2 * v, "none": 0}[gain]
    return books + ids + gains + (4 * d if center else 0) + (8 if rotate else 0)


def code_bytes(counts_per_tier, d: int, tiers) -> int:
    """Packed code bytes: n_t rows * (d/g) codes * b bits, rounded up per tier."""
    return sum((n * (d // g) * b + 7) // 8 for n, (g, b) in zip(counts_per_tier, tiers))


# ----------------------------------------------------------------------------- packing
def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (any shape, < 2^bits) -> uint8 `[ceil(size * bits / 8)]`, little-endian bits."""
    c = np.asarray(codes, np.uint32).reshape(-1)
    planes = ((c[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, shape) -> np.ndarray:
    """Inverse of `pack_codes`: int32 codes of `shape`."""
    n = int(np.prod(shape))
    planes = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: n * bits]
    planes = planes.reshape(n, bits).astype(np.int64)
    return (planes << np.arange(bits)).sum(1).astype(np.int32).reshape(shape)


# ----------------------------------------------------------------------------- k-means (JAX)
def _nearest(x, c):
    """x `[n, g]`, c `[K, g]` -> (index [n] int32, squared error [n])."""
    dist = jnp.sum(c * c, 1)[None] - 2 * x @ c.T                       # [n, K]
    i = jnp.argmin(dist, 1).astype(jnp.int32)
    return i, jnp.sum((x - c[i]) ** 2, 1)


@jax.jit
def _assign_chunks(x, c):
    """x `[n_chunks, CHUNK, g]` -> index, error `[n_chunks, CHUNK]` (one chunk at a time)."""
    return jax.lax.map(lambda xb: _nearest(xb, c), x)


def _chunked(x: np.ndarray, fill=0.0):
    n = x.shape[0]
    pad = (-n) % CHUNK
    xp = np.concatenate([x, np.full((pad,) + x.shape[1:], fill, x.dtype)])
    return xp.reshape(-1, CHUNK, *x.shape[1:]), n


def assign(x: np.ndarray, c: np.ndarray):
    """Nearest codeword of each row of x `[n, g]` in c `[K, g]`: (index [n], error [n])."""
    xc, n = _chunked(np.asarray(x, np.float32))
    i, e = _assign_chunks(jnp.asarray(xc), jnp.asarray(c, jnp.float32))
    return np.asarray(i).reshape(-1)[:n], np.asarray(e).reshape(-1)[:n]


@partial(jax.jit, static_argnames=("iters",))
def _lloyd(x, w, c, iters: int):
    """`iters` weighted Lloyd steps. x `[n_chunks, CHUNK, g]`, w `[n_chunks, CHUNK]`."""
    k, g = c.shape

    def step(_, c):
        i, _ = jax.lax.map(lambda xb: _nearest(xb, c), x)
        i, xf, wf = i.reshape(-1), x.reshape(-1, g), w.reshape(-1)
        s = jax.ops.segment_sum(xf * wf[:, None], i, k)
        n = jax.ops.segment_sum(wf, i, k)
        return jnp.where(n[:, None] > 0, s / jnp.maximum(n, 1e-30)[:, None], c)  # empty: keep
    return jax.lax.fori_loop(0, iters, step, c)


def kmeans(x: np.ndarray, k: int, *, seed: int, iters: int = 20, weights=None, init=None,
           max_train: int = 1 << 17) -> np.ndarray:
    """Codebook `[k, g]` (fp16-exact float32) by weighted k-means on x `[n, g]`.

    Trains on at most `max_train` vectors drawn with the seed (all of them when fewer);
    init: the given codebook, else k distinct training vectors.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    w = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)
    if len(x) > max_train:
        pick = rng.choice(len(x), max_train, replace=False)
        x, w = x[pick], w[pick]
    if init is None:
        init = x[rng.choice(len(x), k, replace=len(x) < k)]
        init = init + 1e-3 * rng.standard_normal(init.shape).astype(np.float32) * (len(x) < k)
    xc, _ = _chunked(x)
    wc, _ = _chunked(w[:, None])
    c = _lloyd(jnp.asarray(xc), jnp.asarray(wc[..., 0]), jnp.asarray(init, jnp.float32), iters)
    return np.asarray(c).astype(np.float16).astype(np.float32)


# ----------------------------------------------------------------------------- LDLQ (JAX)
def ldlq_matrices(hess: np.ndarray, g: int, damp: float = 0.01) -> np.ndarray:
    """`[d/g, g, d]`: for group j (columns B), A_j = U_BB^-1 U_B: with H^-1 = U^T U (U upper).

    Coding group j with error E `[n, g]` updates the rows as W -= E @ A_j: the OBS/GPTQ update
    of the columns after B for a block coded jointly (columns before B are zero in A_j)."""
    d = hess.shape[0]
    h = hess.astype(np.float64) + damp * np.mean(np.diag(hess)) * np.eye(d)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    out = np.zeros((d // g, g, d))
    for j in range(d // g):
        b = slice(j * g, (j + 1) * g)
        out[j] = np.linalg.solve(u[b, b], u[b])
    return out.astype(np.float32)


@jax.jit
def _ldlq(w, c, a):
    """Sequential vector rounding: w `[n, d]`, c `[K, g]`, a `[M, g, d]` -> codes `[n, M]`."""
    m, g, _ = a.shape

    def body(j, carry):
        w, codes, seen = carry
        blk = jax.lax.dynamic_slice_in_dim(w, j * g, g, axis=1)
        i, _ = _nearest(blk, c)
        w = w - (blk - c[i]) @ a[j]
        seen = jax.lax.dynamic_update_slice_in_dim(seen, blk, j * g, axis=1)
        return w, codes.at[:, j].set(i), seen
    _, codes, seen = jax.lax.fori_loop(
        0, m, body, (w, jnp.zeros((w.shape[0], m), jnp.int32), jnp.zeros_like(w)))
    return codes, seen


def ldlq(w: np.ndarray, c: np.ndarray, a: np.ndarray, rows: int = 8192):
    """`_ldlq` over row chunks (rows are independent): (codes `[n, d/g]` int32, the targets
    each group was rounded from `[n, d]`, i.e. the rows with earlier errors fed back)."""
    out = [_ldlq(jnp.asarray(w[i:i + rows]), jnp.asarray(c), jnp.asarray(a))
           for i in range(0, len(w), rows)]
    if not out:
        return np.zeros((0, a.shape[0]), np.int32), np.zeros((0, w.shape[1]), np.float32)
    return (np.concatenate([np.asarray(o[0]) for o in out]),
            np.concatenate([np.asarray(o[1]) for o in out]))


# ----------------------------------------------------------------------------- the module
class VQEmbedding(nnx.Module, Described):
    """Tiers of vector codes with per-row gains; see the module docstring.

    Arrays (in memory): `tier` uint8 [V]; per tier t `codes_t` int32 [V_t, d/g_t] and
    `book_t` fp16 [2^b_t, g_t]; `gain` float32 [V] (fp16- or log8-exact values); `mean` [d].
    `index` int32 [V] (row -> its row in its tier) is derived from `tier`, not stored.
    """

    def __init__(self, tier, codes, books, tiers, gain, features, *, gain_mode="log8",
                 gain_range=None, mean=None, seed=0, rotate=True, method="vq",
                 metrics=None, meta=None):
        self.method = method
        self.metrics = metrics
        self.meta = meta
        tier = np.asarray(tier, np.uint8)
        self.tiers = tuple((int(g), int(b)) for g, b in tiers)
        self.gain_mode = gain_mode
        self.gain_range = None if gain_range is None else tuple(float(x) for x in gain_range)
        self.seed = int(seed)
        self.d = int(features)
        self.tier = nnx.Variable(jnp.asarray(tier))
        # static (python ints), as jit needs them for shapes in attend
        self.rows = tuple(int(np.sum(tier == t)) for t in range(len(self.tiers)))
        index = np.zeros(len(tier), np.int32)
        for t in range(len(self.tiers)):
            index[tier == t] = np.arange(int(np.sum(tier == t)), dtype=np.int32)
        self.index = nnx.Variable(jnp.asarray(index))
        for t, (g, b) in enumerate(self.tiers):
            setattr(self, f"codes_{t}",
                    nnx.Variable(jnp.asarray(codes[t], jnp.int32).reshape(-1, self.d // g)))
            setattr(self, f"book_{t}", nnx.Variable(jnp.asarray(books[t], jnp.float16)))
        self.gain = None if gain is None else nnx.Variable(jnp.asarray(gain, jnp.float32))
        self.mean = None if mean is None else nnx.Variable(jnp.asarray(mean, jnp.float32))
        self.rotation = (nnx.Variable(jnp.asarray(random_rotation(self.d, seed)))
                         if rotate else None)

    # --- sizes
    @property
    def vocab_size(self) -> int:
        return self.tier.shape[0]

    @property
    def features(self) -> int:
        return self.d

    def rows_per_tier(self) -> list[int]:
        return list(self.rows)

    def storage_bytes(self) -> int:
        return (code_bytes(self.rows_per_tier(), self.d, self.tiers)
                + overhead_bytes(self.vocab_size, self.d, self.tiers, gain=self.gain_mode,
                                 center=self.mean is not None, rotate=self.rotation is not None))

    def num_params(self) -> int:
        """Stored numbers: codes, codebook entries, gains, tier ids, mean (not the rotation)."""
        n = sum(getattr(self, f"codes_{t}").size + getattr(self, f"book_{t}").size
                for t in range(len(self.tiers)))
        n += self.vocab_size * (len(self.tiers) > 1) + (0 if self.gain is None else self.gain.size)
        return int(n + (0 if self.mean is None else self.mean.size))

    # --- decoding
    def _decode_tier(self, t, rows=None):
        """Rotated-frame rows of tier t `[V_t or len(rows), d]` (gain not applied)."""
        codes = getattr(self, f"codes_{t}")[...]
        if rows is not None:
            codes = jnp.take(codes, rows, axis=0, mode="clip")
        book = getattr(self, f"book_{t}")[...].astype(jnp.float32)
        return book[codes].reshape(*codes.shape[:-1], self.d)

    def _rotated(self, ids):
        """y_hat rows `[..., d]` for ids (rotated frame, gain applied, mean not added)."""
        tier, index = jnp.take(self.tier[...], ids), jnp.take(self.index[...], ids)
        y = jnp.zeros((*ids.shape, self.d), jnp.float32)
        for t in range(len(self.tiers)):
            if self.rows[t]:
                y = jnp.where((tier == t)[..., None], self._decode_tier(t, index), y)
        if self.gain is not None:
            y = y * jnp.take(self.gain[...], ids)[..., None]
        return y

    def _unrotate(self, y):
        return unrotate(y, self.rotation, self.mean)

    def __call__(self, ids):
        """Lookup `[..., d]`: only the looked-up rows are decoded."""
        return self._unrotate(self._rotated(ids))

    def table(self):
        """The decoded table `[V, d]` float32 (one compiled program, also when called eagerly:
        op by op, its per-tier gathers cost ~0.7 s of dispatch and small compiles)."""
        return _decoded_table(*nnx.split(self))

    def attend(self, h):
        """Tied-head logits `[..., V]` = h @ table^T, as (h R) y_hat^T + h . mean.

        Per tier: for more than g_t vectors in h the tier's rows are decoded once (V_t d work,
        less than the N V_t d of the product); for fewer, a lookup table of partial dot products
        with the codebook `[N, d/g, 2^b]` is summed over the codes (N V_t d/g work), so the
        `[V, d]` table is never built for a few-token call (generation)."""
        hr = h if self.rotation is None else h @ self.rotation[...].astype(h.dtype)
        lead = hr.shape[:-1]
        hf = hr.reshape(-1, self.d)
        n = hf.shape[0]
        parts = []
        for t, (g, _) in enumerate(self.tiers):
            codes = getattr(self, f"codes_{t}")[...]
            if codes.shape[0] == 0:
                parts.append(jnp.zeros((n, 0), hf.dtype))
            elif n < g:
                book = getattr(self, f"book_{t}")[...].astype(hf.dtype)
                lut = jnp.einsum("nmg,kg->nmk", hf.reshape(n, self.d // g, g), book)
                m = jnp.arange(self.d // g)
                parts.append(jnp.sum(lut[:, m[None, :], codes], axis=-1))     # [n, V_t]
            else:
                parts.append(hf @ self._decode_tier(t).astype(hf.dtype).T)
        # tier order -> row order: row v sits at offset(tier v) + index v
        offsets = np.concatenate([[0], np.cumsum(self.rows_per_tier())[:-1]]).astype(np.int32)
        pos = jnp.asarray(offsets)[self.tier[...].astype(jnp.int32)] + self.index[...]
        out = jnp.take(jnp.concatenate(parts, axis=1), pos, axis=1)
        if self.gain is not None:
            out = out * self.gain[...].astype(out.dtype)
        out = out.reshape(*lead, self.vocab_size)
        if self.mean is not None:
            out = out + (h @ self.mean[...].astype(h.dtype))[..., None]
        return out

    # --- store
    def export(self) -> tuple[dict, dict]:
        """(arrays, static) for `store.save_compressed`, in the packed form `storage_bytes`
        counts: codes at b bits, tier ids at ceil(log2 T) bits, gains as uint8 log codes or
        fp16, codebooks fp16; the rotation as its seed."""
        tier = np.asarray(self.tier[...])
        arrays = {}
        if len(self.tiers) > 1:
            arrays["tier"] = pack_codes(tier, _tier_bits(len(self.tiers)))
        for t, (g, b) in enumerate(self.tiers):
            arrays[f"codes_{t}"] = pack_codes(np.asarray(getattr(self, f"codes_{t}")[...]), b)
            arrays[f"book_{t}"] = np.asarray(getattr(self, f"book_{t}")[...], np.float16)
        if self.gain_mode == "log8":
            arrays["gain"] = encode_log8(np.asarray(self.gain[...]), self.gain_range)
        elif self.gain_mode == "fp16":
            arrays["gain"] = np.asarray(self.gain[...], np.float16)
        if self.mean is not None:
            arrays["mean"] = np.asarray(self.mean[...])
        static = {"tiers": [list(x) for x in self.tiers], "rows_per_tier": self.rows_per_tier(),
                  "gain_mode": self.gain_mode, "gain_range": self.gain_range, "seed": self.seed,
                  "rotate": self.rotation is not None, "features": self.d,
                  "vocab": self.vocab_size}
        return arrays, static

    @classmethod
    def restore(cls, arrays: dict, static: dict, **described) -> "VQEmbedding":
        tiers = [tuple(x) for x in static["tiers"]]
        v, d = static["vocab"], static["features"]
        tier = (unpack_codes(arrays["tier"], _tier_bits(len(tiers)), (v,)) if len(tiers) > 1
                else np.zeros(v, np.int32))
        codes = [unpack_codes(arrays[f"codes_{t}"], b, (n, d // g))
                 for t, ((g, b), n) in enumerate(zip(tiers, static["rows_per_tier"]))]
        books = [arrays[f"book_{t}"] for t in range(len(tiers))]
        mode = static["gain_mode"]
        gain = (decode_log8(arrays["gain"], static["gain_range"]) if mode == "log8"
                else arrays["gain"].astype(np.float32) if mode == "fp16" else None)
        return cls(tier, codes, books, tiers, gain, d, gain_mode=mode,
                   gain_range=static["gain_range"], mean=arrays.get("mean"),
                   seed=static["seed"], rotate=static["rotate"], **described)


@partial(jax.jit, static_argnums=0)
def _decoded_table(graphdef, state):
    """VQEmbedding.table() as one program (graphdef static: one compile per table layout)."""
    emb = nnx.merge(graphdef, state)
    return emb(jnp.arange(emb.vocab_size))


# ----------------------------------------------------------------------------- gains
def log8_range(gain: np.ndarray):
    """(lo, hi) of log gain over the non-zero gains (code 0 is reserved for a zero row)."""
    pos = gain[gain > 0]
    if pos.size == 0:
        return (0.0, 0.0)
    return (float(np.log(pos.min())), float(np.log(pos.max())))


def encode_log8(gain: np.ndarray, rng) -> np.ndarray:
    lo, hi = rng
    step = (hi - lo) / 254 if hi > lo else 1.0
    code = 1 + np.rint((np.log(np.maximum(gain, 1e-30)) - lo) / step)
    return np.where(gain > 0, np.clip(code, 1, 255), 0).astype(np.uint8)


def decode_log8(code: np.ndarray, rng) -> np.ndarray:
    lo, hi = rng
    step = (hi - lo) / 254 if hi > lo else 1.0
    value = np.exp(lo + (code.astype(np.float64) - 1) * step)
    return np.where(code > 0, value, 0.0).astype(np.float32)


def store_gain(gain: np.ndarray, mode: str):
    """The gains as stored: (values float32, log range or None)."""
    if mode == "log8":
        rng = log8_range(gain)
        return decode_log8(encode_log8(gain, rng), rng), rng
    return gain.astype(np.float16).astype(np.float32), None


# ----------------------------------------------------------------------------- allocation
def allocate_tiers(errs: np.ndarray, weight: np.ndarray, cost: np.ndarray, budget: float):
    """Tier per row minimising sum_v weight[v] errs[v, t] s.t. sum cost[tier] <= budget (bits).

    errs `[V, T]`, cost `[T]` bits per row. Lagrangian: argmin_t w e + lam c, lam bisected."""
    e = errs * weight[:, None]

    def pick(lam):
        return np.argmin(e + lam * cost[None], axis=1)

    if cost[pick(1e30)].sum() > budget:
        raise QuantizeError(f"byte budget below the cheapest tier for every row "
                            f"({cost.min():.0f} bits a row)")
    lo, hi = -40.0, 40.0
    for _ in range(90):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost[pick(10 ** mid)].sum() > budget else (lo, mid)
    return pick(10 ** hi).astype(np.uint8)


# ----------------------------------------------------------------------------- the method
def vq(table, *, rate: float, seed: int = 0, tiers=DEFAULT_TIERS, norm: str = "log8",
       gain: str = "norm", center: bool = True, rotate: bool = True, counts=None,
       floor: float = 0.25, hidden=None, head_weight: float = 0.9, iters: int = 20,
       refit_iters: int = 10, weighted: bool = False, ldlq_rounds: int = 2,
       refine_steps: int = 60, refine_lr: float = 3e-3, max_train: int = 1 << 17,
       prob_weight: float = 0.0) -> VQEmbedding:
    """Compress `table [V, d]` into at most V*d*4/rate bytes with tiered vector codes.

    norm: "log8" / "fp16": each row's gain stored apart (8-bit log or fp16) and the direction
      coded; "none": plain vector codes of the raw rotated rows.
    gain: "norm" (keep each row's norm) or "ls" (least-squares gain); ignored for norm="none".
    counts `[V]`: row weight counts/sum + floor/V for the tier allocation (None: equal).
    hidden `[N, d]`: LDLQ against H = (1-a) I/d + a E[hh^T]/tr, a = head_weight (None: nearest).
    ldlq_rounds: with hidden, rounds of (codebook refit on LDLQ's targets, LDLQ) after the first.
    refine_steps: with hidden and a gain, Adam steps on the codebooks and log gains (codes
      fixed) minimising KL(original tied-head softmax || compressed) on batches of hidden states.
    weighted: refit each tier's codebook by k-means weighted by row weight x row scale^2.
    prob_weight: with hidden, the allocation's row weights mix the normalised counts (1 - p) with
      the mean predicted probability of each row over the calibration states (p): a smoothed
      frequency that also covers tokens the calibration text lacks (the KL's second-order
      term weighs row v's head error by p_v(h)).
    Deterministic per seed (rotation, k-means samples and init).
    """
    t = np.asarray(table, np.float32)
    if t.ndim != 2 or t.size == 0 or not np.all(np.isfinite(t)):
        raise DataError(f"table must be a finite non-empty [V, d] array, got shape {t.shape}")
    v, d = t.shape
    tiers = tuple((int(g), int(b)) for g, b in tiers)
    if not tiers or any(d % g or not 1 <= b <= 16 for g, b in tiers):
        raise ConfigError(f"tiers must be (g, bits) with g dividing d={d} and 1 <= bits <= 16, "
                          f"got {tiers}")
    if len(tiers) > 16:
        raise ConfigError("at most 16 tiers")
    if norm not in GAINS or gain not in ("norm", "ls", "hls"):
        raise ConfigError(f"norm must be one of {GAINS}, gain 'norm', 'ls' or 'hls'; "
                          f"got {norm!r}, {gain!r}")
    budget = int(v * d * 4 / rate)
    over = overhead_bytes(v, d, tiers, gain=norm, center=center, rotate=rotate)
    code_budget_bits = (budget - over - len(tiers)) * 8      # -T bytes: each tier's rounding up

    mean = t.mean(0) if center else None
    y = (t - mean) if center else t
    rot = random_rotation(d, seed) if rotate else None
    y = (y @ rot) if rotate else y
    y = y.astype(np.float32)
    rownorm = np.linalg.norm(y, axis=1)
    if norm == "none":
        u = y
    else:
        scale = np.sqrt(d) / np.maximum(rownorm, 1e-30)
        u = np.where(rownorm[:, None] > 0, y * scale[:, None], 0.0)
    u = u.astype(np.float32)
    to_y = (np.ones(v) if norm == "none" else rownorm ** 2 / d)   # squared-error scale u -> y
    w = (np.ones(v) if counts is None else np.asarray(counts, np.float64))
    w = w / max(w.sum(), 1e-30)
    if prob_weight and hidden is not None:
        w = (1 - prob_weight) * w + prob_weight * mean_probability(t, hidden)
    w = w + floor / v

    # 1. a codebook per tier (k-means on a sample of all rows' groups) and its distortion per
    # entry D_t on that sample. After the rotation every row's (unit-variance) direction looks
    # alike, so row v's error in tier t is |u_v|^2 D_t in the u frame (|y_v|^2 D_t after the
    # gain): the allocation needs no coding of every row in every tier.
    books, dist = [], np.zeros(len(tiers))
    rng = np.random.default_rng(seed)
    sample = u[rng.choice(v, min(v, max(1, max_train * 16 // d)), replace=False)]
    energy = float(np.mean(np.sum(sample ** 2, 1)))
    for k, (g, b) in enumerate(tiers):
        x = u.reshape(-1, g)
        books.append(kmeans(x, 2 ** b, seed=seed + 1000 * k, iters=iters, max_train=max_train))
        _, e = assign(sample.reshape(-1, g), books[-1])
        dist[k] = e.sum() / len(sample) / max(energy, 1e-30)     # relative error of tier k
    errs = (np.sum(u * u, 1) * to_y)[:, None] * dist[None, :]
    cost = np.array([(d // g) * b for g, b in tiers], np.float64)
    if len(tiers) == 1:
        tier = np.zeros(v, np.uint8)
        if cost[0] * v > code_budget_bits:
            raise QuantizeError(f"rate {rate} leaves {code_budget_bits / (v * d):.2f} bits per "
                                f"entry; tier {tiers[0]} needs {tiers[0][1] / tiers[0][0]:.2f}")
    else:
        tier = allocate_tiers(errs, w, cost, code_budget_bits)

    # 2. refit each codebook on its own rows, then code them (LDLQ when hidden states are given)
    hess = None
    if hidden is not None and head_weight > 0:
        hd = np.asarray(hidden, np.float64)
        hd = hd @ rot if rotate else hd
        hh = hd.T @ hd
        hess = (1 - head_weight) * np.eye(d) / d + head_weight * hh / np.trace(hh)
    codes = []
    for k, (g, b) in enumerate(tiers):
        rows = np.flatnonzero(tier == k)
        if len(rows) == 0:
            codes.append(np.zeros((0, d // g), np.int32))
            continue
        x = u[rows].reshape(-1, g)
        if refit_iters:
            # weighted: each row's groups count by the row's weight times its error scale
            wx = np.repeat(w[rows] * to_y[rows], d // g) if weighted else None
            books[k] = kmeans(x, 2 ** b, seed=seed + 1000 * k + 1, iters=refit_iters,
                              init=books[k], max_train=max_train, weights=wx)
        if hess is not None:
            a = ldlq_matrices(hess, g)
            c, seen = ldlq(u[rows], books[k], a)
            for r in range(ldlq_rounds - 1):
                # the codebook refit on what LDLQ rounds (rows with earlier errors fed back,
                # wider than u), then LDLQ again
                wx = np.repeat(w[rows] * to_y[rows], d // g) if weighted else None
                books[k] = kmeans(seen.reshape(-1, g), 2 ** b, seed=seed + 1000 * k + 2 + r,
                                  iters=refit_iters, init=books[k], max_train=max_train, weights=wx)
                c, seen = ldlq(u[rows], books[k], a)
            codes.append(c)
        else:
            codes.append(assign(x, books[k])[0].reshape(len(rows), d // g))

    # 3. gains: per row, from the coded direction q
    gains, grange = None, None
    if norm != "none":
        q = np.zeros_like(u)
        for k, (g, b) in enumerate(tiers):
            rows = np.flatnonzero(tier == k)
            q[rows] = books[k][codes[k]].reshape(len(rows), d)
        qq = np.sum(q * q, 1)
        if gain == "norm":
            raw = rownorm / np.sqrt(np.maximum(qq, 1e-30))
        elif gain == "hls" and hess is not None:     # least squares in the H metric
            qh = q @ hess.astype(np.float32)
            qq = np.sum(qh * q, 1)
            raw = np.sum(qh * y, 1) / np.maximum(qq, 1e-30)
        else:
            raw = np.sum(y * q, 1) / np.maximum(qq, 1e-30)
        raw = np.where((qq > 0) & (rownorm > 0), np.maximum(raw, 0.0), 0.0)
        gains, grange = store_gain(raw, norm)
        if refine_steps and hidden is not None:
            books, raw = refine(t, mean, rot, tier, codes, books, raw, np.asarray(hidden),
                                steps=refine_steps, lr=refine_lr, seed=seed)
            gains, grange = store_gain(raw, norm)
    emb = VQEmbedding(tier, codes, books, tiers, gains, d, gain_mode=norm, gain_range=grange,
                      mean=mean, seed=seed, rotate=rotate,
                      meta={"tiers": [list(x) for x in tiers], "norm": norm, "gain": gain,
                            "head_weight": head_weight if hess is not None else 0.0})
    assert emb.storage_bytes() <= budget, (emb.storage_bytes(), budget)
    return emb


@jax.jit
def _prob_sum(h, live, table):
    """Sum over the live states of h `[n, d]` of softmax(h table^T) `[V]`."""
    return jnp.sum(jax.nn.softmax(h @ table.T, axis=-1) * live[:, None], axis=0)


def mean_probability(table, hidden, rows: int = 512) -> np.ndarray:
    """`[V]` float64: the tied head's softmax(h table^T) averaged over the states h `[N, d]`
    (`rows` states at a time, the last slice padded and masked: never `[N, V]`)."""
    tab, hid = jnp.asarray(table, jnp.float32), np.asarray(hidden, np.float32)
    n = len(hid)
    hid = np.pad(hid, ((0, (-n) % rows), (0, 0)))
    live = (np.arange(len(hid)) < n).astype(np.float32)
    total = np.zeros(tab.shape[0])
    for i in range(0, len(hid), rows):
        total += np.asarray(_prob_sum(jnp.asarray(hid[i:i + rows]), jnp.asarray(live[i:i + rows]),
                                      tab))
    return total / max(n, 1)


# ----------------------------------------------------------------------------- refinement
def refine(table, mean, rot, tier, codes, books, gain, hidden, *, steps: int, lr: float,
           batch: int = 256, seed: int = 0):
    """Output-aware refinement with the codes fixed: Adam on the codebooks and the log gains
    minimising KL(softmax(h E^T) || softmax(h E_hat^T)) over batches of calibration hidden
    states h (the tied head's logits). Returns (books fp16-exact, gains float32)."""
    import optax
    v, d = table.shape
    h = jnp.asarray(hidden, jnp.float32)
    hr = h @ jnp.asarray(rot) if rot is not None else h
    hm = h @ jnp.asarray(mean) if mean is not None else jnp.zeros(h.shape[0])
    tab = jnp.asarray(table)
    rows = [jnp.asarray(np.flatnonzero(tier == k)) for k in range(len(books))]
    cj = [jnp.asarray(c) for c in codes]
    live = jnp.asarray(gain > 0)
    params = {"books": [jnp.asarray(b) for b in books],
              "lg": jnp.asarray(np.log(np.where(gain > 0, gain, 1.0)), jnp.float32)}

    def decode(p):
        y = jnp.zeros((v, d), jnp.float32)
        for b, r, c in zip(p["books"], rows, cj):
            if c.shape[0]:
                y = y.at[r].set(b[c].reshape(-1, d))
        return y * jnp.where(live, jnp.exp(p["lg"]), 0.0)[:, None]

    def loss(p, idx):
        zo = h[idx] @ tab.T
        z = hr[idx] @ decode(p).T + hm[idx][:, None]
        lo = jax.nn.log_softmax(zo)
        return jnp.mean(jnp.sum(jnp.exp(lo) * (lo - jax.nn.log_softmax(z)), -1))

    opt = optax.adam(lr)

    @jax.jit
    def step(p, s, idx):
        val, g = jax.value_and_grad(loss)(p, idx)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, val

    state = opt.init(params)
    rng = np.random.default_rng(seed + 7)
    for _ in range(steps):
        idx = jnp.asarray(rng.choice(h.shape[0], min(batch, h.shape[0]), replace=False))
        params, state, _ = step(params, state, idx)
    books = [np.asarray(b).astype(np.float16).astype(np.float32) for b in params["books"]]
    return books, np.where(gain > 0, np.exp(np.asarray(params["lg"])), 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- registered method
OPTIONS = ("tiers", "norm", "gain", "center", "rotate", "floor", "head_weight", "iters",
           "refit_iters", "weighted", "ldlq_rounds", "refine_steps", "refine_lr", "max_train",
           "prob_weight")


def check_options(options: dict) -> None:
    """ConfigError on an option `vq` does not know (judged before any model loads)."""
    stray = sorted(set(options) - set(OPTIONS) - {"seed"})
    if stray:
        raise ConfigError(f"unknown option(s) for method 'vq': {', '.join(stray)} "
                          f"(known: counts, hidden, seed, {', '.join(OPTIONS)})")


def vq_method(table, *, rate=None, rank=None, seed: int = 0, counts=None, hidden=None,
              **options) -> VQEmbedding:
    """`compress(table, rate=r, method="vq", counts=[V], hidden=[N, d])`: tiered vector codes
    (see the module docstring); counts and hidden are optional calibration."""
    if rank is not None or rate is None:
        raise ConfigError("method vq takes a rate (bytes), not a rank")
    check_options(options)
    v, d = np.shape(table)
    if counts is not None:
        counts = np.asarray(counts, np.float64)
        if counts.shape != (v,) or np.any(counts < 0):
            raise DataError(f"counts must be [V={v}] non-negative, got {counts.shape}")
    if hidden is not None:
        hidden = np.asarray(hidden, np.float32)
        if hidden.ndim != 2 or hidden.shape[1] != d or not np.all(np.isfinite(hidden)):
            raise DataError(f"hidden must be finite [N, d={d}], got {hidden.shape}")
    return vq(table, rate=rate, seed=seed, counts=counts, hidden=hidden, **options)
