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

Registered as `vq` (vq_method; defaults = what was kept, `VQOptions`: norm log8, gain norm,
floor 0.25, head_weight 0.9, ldlq_rounds 2, refine_steps 60). The frame, the tier allocation
and the packing are shared with the scalar codes (codec.py); k-means and LDLQ are kmeans.py.
Measured with bench/vq_explore.py on SmolLM2-135M, input AND tied head replaced, first 4,096
tokens of WikiText-2 raw test (original 30.64), calibration on WikiText-2 valid; tied ppl at
rate 16 / rate 32 (quant_gptq: 40.41 / refused):
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
from dataclasses import dataclass, fields, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dirjax.compress.codec import (
    BOOL,
    SCORE_TOKENS,
    QuantizeError,
    RotatedHead,
    allocate,
    centre_and_rotate,
    check_counts,
    check_hidden,
    check_table,
    check_values,
    choice,
    chunk_product,
    chunk_start,
    class_logits,
    head_hessian,
    integer,
    is_int,
    number,
    pack_codes,
    packed_bytes,
    random_rotation,
    sum_dtype,
    unpack_codes,
    unrotate,
)
from dirjax.compress.kmeans import assign, kmeans, ldlq, ldlq_matrices
from dirjax.embedding import Described
from dirjax.errors import ConfigError

DEFAULT_TIERS = ((16, 8), (8, 8), (4, 8), (2, 8))
GAINS = ("log8", "fp16", "none")       # how a row's gain is stored (option `norm`)
GAIN_FITS = ("norm", "ls", "hls")      # how it is fitted (option `gain`)
MAX_TIERS, MAX_TIER_BITS = 16, 16
LUT_TOKENS = 1       # up to this many tokens the head sums a lookup table (attend_chunk)


# ----------------------------------------------------------------------------- options
def _is_tiers(x) -> bool:
    return (isinstance(x, (list, tuple)) and 1 <= len(x) <= MAX_TIERS
            and all(isinstance(t, (list, tuple)) and len(t) == 2 and all(map(is_int, t))
                    and t[0] >= 1 and 1 <= t[1] <= MAX_TIER_BITS for t in x))


# each option's type and range, judged before any model loads (that each group divides d is
# judged when the table is known)
RULES = {"seed": integer(0),
         "tiers": (_is_tiers, f"a non-empty list of at most {MAX_TIERS} (group, bits) integer "
                              f"pairs, group >= 1 and 1 <= bits <= {MAX_TIER_BITS}"),
         "norm": choice(*GAINS), "gain": choice(*GAIN_FITS), "center": BOOL, "rotate": BOOL,
         "floor": number(0), "head_weight": number(0, 1), "iters": integer(1),
         "refit_iters": integer(0), "weighted": BOOL, "ldlq_rounds": integer(1),
         "refine_steps": integer(0), "refine_lr": number(positive=True),
         "max_train": integer(1), "prob_weight": number(0, 1)}


@dataclass(frozen=True)
class VQOptions:
    """`vq`'s options, as users pass them (`method_options.vq.tiers=...`); the defaults are
    what was kept (module docstring).

    tiers: (g, b) pairs: groups of g entries coded by b-bit indices into a 2^b codebook.
    norm: "log8" / "fp16": each row's gain stored apart (8-bit log or fp16) and the direction
      coded; "none": plain vector codes of the raw rotated rows.
    gain: "norm" (keep each row's norm), "ls" (least-squares gain) or "hls" (least squares in
      the H metric); ignored for norm="none".
    floor: row weight counts/sum + floor/V for the tier allocation (None counts: equal).
    head_weight: with hidden, LDLQ against H = (1-a) I/d + a E[hh^T]/tr, a = head_weight.
    iters / refit_iters: Lloyd steps of the first codebooks / of the refit on a tier's rows.
    weighted: refit each tier's codebook by k-means weighted by row weight x row scale^2.
    ldlq_rounds: with hidden, LDLQ passes; each after the first refits the codebook on what
      the pass before rounded (its targets: rows with earlier errors fed back).
    refine_steps / refine_lr: with hidden and a gain, Adam steps on the codebooks and log gains
      (codes fixed) minimising KL(original tied-head softmax || compressed).
    max_train: vectors each k-means trains on (a sample drawn with the seed).
    prob_weight: with hidden, the allocation's row weights mix the normalised counts (1 - p)
      with the mean predicted probability of each row over the calibration states (p): a
      smoothed frequency that also covers tokens the calibration text lacks.
    """
    seed: int = 0
    tiers: tuple = DEFAULT_TIERS
    norm: str = "log8"
    gain: str = "norm"
    center: bool = True
    rotate: bool = True
    floor: float = 0.25
    head_weight: float = 0.9
    iters: int = 20
    refit_iters: int = 10
    weighted: bool = False
    ldlq_rounds: int = 2
    refine_steps: int = 60
    refine_lr: float = 3e-3
    max_train: int = 1 << 17
    prob_weight: float = 0.0

    @classmethod
    def checked(cls, options: dict) -> "VQOptions":
        """The options, each judged by its rule (ConfigError naming it), tiers as int pairs."""
        check_values("vq", options, RULES)
        opts = cls(**options)
        return replace(opts, tiers=tuple((int(g), int(b)) for g, b in opts.tiers))


assert set(RULES) == {f.name for f in fields(VQOptions)}


# ----------------------------------------------------------------------------- bytes
def _tier_bits(n_tiers: int) -> int:
    return 0 if n_tiers <= 1 else math.ceil(math.log2(n_tiers))


def overhead_bytes(v: int, d: int, tiers, *, gain: str, center: bool, rotate: bool) -> int:
    """Everything but the codes: codebooks (fp16), tier ids, gains, mean row, seed."""
    books = sum((2 ** b) * g * 2 for g, b in tiers)
    ids = int(packed_bytes(v, _tier_bits(len(tiers))))
    gains = {"log8": v + 8, "fp16": 2 * v, "none": 0}[gain]
    return books + ids + gains + (4 * d if center else 0) + (8 if rotate else 0)


def code_bytes(counts_per_tier, d: int, tiers) -> int:
    """Packed code bytes: n_t rows * (d/g) codes * b bits, rounded up per tier."""
    return sum(int(packed_bytes(n * (d // g), b)) for n, (g, b) in zip(counts_per_tier, tiers))


# ----------------------------------------------------------------------------- the module
class Tier(nnx.Module):
    """One tier's rows: codes `[V_t, d/g]` into its codebook fp16 `[2^b, g]`. In memory the
    codes are the narrowest unsigned integers that hold b bits (uint8 for the default b = 8,
    uint16 up to 16): a head reads each code once per step, so their bytes are its traffic."""

    def __init__(self, codes, book, group: int, bits: int, features: int):
        self.group, self.bits, self.features = int(group), int(bits), int(features)
        dtype = jnp.uint8 if self.bits <= 8 else jnp.uint16
        self.codes = nnx.Variable(jnp.asarray(np.asarray(codes).reshape(-1, features // group),
                                              dtype))
        self.book = nnx.Variable(jnp.asarray(book, jnp.float16))

    @property
    def rows(self) -> int:
        """V_t (static: a shape, as jit needs it)."""
        return self.codes.shape[0]

    def decode(self, rows=None, dtype=jnp.float32):
        """Rotated-frame rows `[V_t or len(rows), d]` (gain not applied)."""
        codes = self.codes[...]
        if rows is not None:
            codes = jnp.take(codes, rows, axis=0, mode="clip")
        return self._decoded(codes, dtype)

    def _decoded(self, codes, dtype):
        book = self.book[...].astype(dtype)
        return book[codes.astype(jnp.int32)].reshape(*codes.shape[:-1], self.features)

    def logits(self, hf, first, count: int, lut=None):
        """hf `[n, d]` (rotated frame) . the tier's rows first..first+count-1 -> `[n, count]`
        (gain not applied), from their codes: summed from `lut` (`Tier.lut(hf)`) when given,
        else the rows decoded and dotted at once (decoding: fp32; scoring, bf16 included,
        decodes its chunk in `VQEmbedding.attend_chunk`)."""
        codes = jax.lax.dynamic_slice_in_dim(self.codes[...], first, count, axis=0)
        if lut is None:
            return hf @ self._decoded(codes, hf.dtype).T
        m, k = codes.shape[1], 2 ** self.bits
        at = codes.astype(jnp.int32) + (jnp.arange(m, dtype=jnp.int32) * k)[None]
        return lut.at[at].get(mode="promise_in_bounds").sum(axis=1).T      # [count, m, n]

    def lut(self, hf):
        """The partial dot products of hf `[n, d]` with every codeword of every group of
        entries, `[(d/g) 2^b, n]`: row j 2^b + c is hf's group j . codeword c, so a row's
        logit is the sum of its d/g codes' rows (one gather per code brings all n)."""
        n, g = hf.shape[0], self.group
        book = self.book[...].astype(hf.dtype)
        lut = jnp.einsum("nmg,kg->mkn", hf.reshape(n, self.features // g, g), book)
        return lut.reshape(-1, n)


class VQEmbedding(nnx.Module, Described, RotatedHead):
    """Tiers of vector codes with per-row gains; see the module docstring.

    Arrays (in memory): `tier` uint8 [V]; `tier_codes[t]` a `Tier` (codes uint8 or uint16
    [V_t, d/g_t], book fp16 [2^b_t, g_t]); `gain` float32 [V] (fp16- or log8-exact values);
    `mean` [d].
    `index` int32 [V] (row -> its row in its tier) is derived from `tier`, not stored.
    """
    # what end-to-end refinement trains with the codes fixed (dirjax/compress/e2e.py)
    CONTINUOUS = ("book", "gain", "mean")

    def round_to_storage(self) -> None:
        """Gains back to what is stored (log8 codes over their own new range, or fp16), after
        refinement changed them; books are fp16 Variables already."""
        if self.gain is not None and self.gain_mode != "none":
            gain, self.gain_range = store_gain(np.asarray(self.gain[...], np.float32),
                                               self.gain_mode)
            self.gain[...] = jnp.asarray(gain, jnp.float32)
            if self.gain_range is not None:
                self.gain_range = tuple(float(x) for x in self.gain_range)

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
        index = np.zeros(len(tier), np.int32)
        for t in range(len(self.tiers)):
            index[tier == t] = np.arange(int(np.sum(tier == t)), dtype=np.int32)
        self.index = nnx.Variable(jnp.asarray(index))
        self.tier_codes = nnx.List([Tier(c, book, g, b, self.d)
                                    for c, book, (g, b) in zip(codes, books, self.tiers)])
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
        return [int(part.rows) for part in self.tier_codes]

    def storage_bytes(self) -> int:
        return (code_bytes(self.rows_per_tier(), self.d, self.tiers)
                + overhead_bytes(self.vocab_size, self.d, self.tiers, gain=self.gain_mode,
                                 center=self.mean is not None, rotate=self.rotation is not None))

    def num_params(self) -> int:
        """Stored numbers: codes, codebook entries, gains, tier ids, mean (not the rotation)."""
        n = sum(part.codes.size + part.book.size for part in self.tier_codes)
        n += self.vocab_size * (len(self.tiers) > 1) + (0 if self.gain is None else self.gain.size)
        return int(n + (0 if self.mean is None else self.mean.size))

    # --- decoding
    def _rotated(self, ids):
        """y_hat rows `[..., d]` for ids (rotated frame, gain applied, mean not added)."""
        tier, index = jnp.take(self.tier[...], ids), jnp.take(self.index[...], ids)
        y = jnp.zeros((*ids.shape, self.d), jnp.float32)
        for t, part in enumerate(self.tier_codes):
            if part.rows:
                y = jnp.where((tier == t)[..., None], part.decode(index), y)
        if self.gain is not None:
            y = y * jnp.take(self.gain[...], ids)[..., None]
        return y

    def __call__(self, ids):
        """Lookup `[..., d]`: only the looked-up rows are decoded."""
        return unrotate(self._rotated(ids), self.rotation, self.mean)

    def table(self):
        """The decoded table `[V, d]` float32 (one compiled program, also when called eagerly:
        op by op, its per-tier gathers cost ~0.7 s of dispatch and small compiles)."""
        return _decoded_table(*nnx.split(self))

    def attend(self, h):
        """Tied-head logits `[..., V]` = h @ table^T, read from the codes (`attend_chunk`), in
        h's dtype."""
        return self.attend_chunk(h, 0, self.vocab_size).astype(h.dtype)

    def attend_chunk(self, h, start, size: int, frame=None):
        """The logits `[..., size]` of rows start..start+size-1 (start may be traced; clamped
        as `lax.dynamic_slice` clamps it) = (h R) y_hat^T * gain + h . mean, never through a
        `[V, d]` table. Decoding (fewer than `codec.SCORE_TOKENS` tokens): each tier's rows in
        the chunk decoded a block at a time from their codes and dotted at once
        (`codec.class_logits`), in fp32 (the bytes read are the codes either way), the gains
        applied to the sums. Scoring (more tokens): the chunk's rows decoded once in
        vocabulary order, gains applied, `[size, d]`, and multiplied as a dense table's chunk
        is (`codec.chunk_product`: bf16 operands summed in fp32 when scoring bf16 states),
        where the tiers' runs would cost a gather over the `[n, size]` logits to put the
        columns back in order. Returned in fp32 (at least): a bf16 evaluation's log-sum-exp
        reads unrounded logits."""
        hr, base = self.frame(h) if frame is None else frame
        if hr.shape[0] >= SCORE_TOKENS:
            start = chunk_start(start, size, self.vocab_size)
            out = chunk_product(hr, self._rotated(start + jnp.arange(size)))
        else:
            parts = self.tier_codes
            # one token (decoding at batch 1): sums of a lookup table of partial dot products,
            # one gather per code (Gemma 3's table at rate 16: 24 ms against 93 decoding);
            # more: rows decoded and dotted, one gather of g entries per code (at batch 2 the
            # table's gathers already cost more; docs/speed.md)
            luts = ([part.lut(hr) if part.rows else None for part in parts]
                    if hr.shape[0] <= LUT_TOKENS else [None] * len(parts))
            out = class_logits(
                lambda t, first, count: parts[t].logits(hr, first, count, luts[t]),
                self.tier[...], self.index[...], self.rows_per_tier(),
                hr.shape[0], sum_dtype(hr), start, size)
            if self.gain is not None:
                start = chunk_start(start, size, self.vocab_size)
                gain = jax.lax.dynamic_slice_in_dim(self.gain[...], start, size)
                out = out * gain.astype(out.dtype)
        if base is not None:
            out = out + base[:, None]
        return out.reshape(*h.shape[:-1], size)

    # --- store
    def export(self) -> tuple[dict, dict]:
        """(arrays, static) for `store.save_compressed`, in the packed form `storage_bytes`
        counts: codes at b bits (`codes_t`), codebooks fp16 (`book_t`), tier ids at
        ceil(log2 T) bits, gains as uint8 log codes or fp16; the rotation as its seed."""
        tier = np.asarray(self.tier[...])
        arrays = {}
        if len(self.tiers) > 1:
            arrays["tier"] = pack_codes(tier, _tier_bits(len(self.tiers)))
        for t, part in enumerate(self.tier_codes):
            arrays[f"codes_{t}"] = pack_codes(np.asarray(part.codes[...]), part.bits)
            arrays[f"book_{t}"] = np.asarray(part.book[...], np.float16)
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
    """Gains `[V]` -> uint8 codes: 0 a zero gain, 1..255 log-uniform over rng = (lo, hi)."""
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


# ----------------------------------------------------------------------------- the method
def vq(table, *, rate: float, counts=None, hidden=None, **options) -> VQEmbedding:
    """Compress `table [V, d]` into at most V*d*4/rate bytes with tiered vector codes.

    counts `[V]`: token counts on calibration text, for the tier allocation (None: equal).
    hidden `[N, d]`: calibration final hidden states, for LDLQ, the allocation's predicted
    probabilities and the refinement (None: nearest codes). options: `VQOptions`.
    Deterministic per seed (rotation, k-means samples and init).
    """
    opts = VQOptions.checked(options)
    t = check_table(table)
    v, d = t.shape
    tiers = opts.tiers
    if any(d % g for g, _ in tiers):
        raise ConfigError(f"vq option tiers: each group must divide d={d}, got {tiers}")
    budget = int(v * d * 4 / rate)
    over = overhead_bytes(v, d, tiers, gain=opts.norm, center=opts.center, rotate=opts.rotate)
    code_budget_bits = (budget - over - len(tiers)) * 8      # -T bytes: each tier's rounding up
    y, mean, rot = centre_and_rotate(t, center=opts.center, rotate=opts.rotate, seed=opts.seed)
    u, rownorm, to_y = directions(y, opts.norm)
    w = row_weights(t, counts, hidden, opts)

    # 1. a codebook per tier and its relative distortion: the tier of each row
    books, dist = first_codebooks(u, opts)
    errs = (np.sum(u * u, 1) * to_y)[:, None] * dist[None, :]
    tier = allocate_tiers(errs, w, tiers, d, code_budget_bits, rate)

    # 2. refit each codebook on its own rows, then code them (LDLQ when hidden states are given)
    hess = (head_hessian(hidden, rot, opts.head_weight)
            if hidden is not None and opts.head_weight > 0 else None)
    books, codes = code_tiers(u, tier, w * to_y, books, hess, opts)

    # 3. gains: per row, from the coded direction q
    gains, grange = None, None
    if opts.norm != "none":
        raw = fit_gains(y, rownorm, decode_directions(books, codes, tier, d), hess, opts.gain)
        gains, grange = store_gain(raw, opts.norm)
        if opts.refine_steps and hidden is not None:
            books, raw = refine(t, mean, rot, tier, codes, books, raw, np.asarray(hidden),
                                steps=opts.refine_steps, lr=opts.refine_lr, seed=opts.seed)
            gains, grange = store_gain(raw, opts.norm)
    emb = VQEmbedding(tier, codes, books, tiers, gains, d, gain_mode=opts.norm,
                      gain_range=grange, mean=mean, seed=opts.seed, rotate=opts.rotate,
                      meta={"tiers": [list(x) for x in tiers], "norm": opts.norm,
                            "gain": opts.gain,
                            "head_weight": opts.head_weight if hess is not None else 0.0})
    assert emb.storage_bytes() <= budget, (emb.storage_bytes(), budget)
    return emb


def directions(y: np.ndarray, norm: str):
    """Rows y `[V, d]` -> (what is coded u `[V, d]` float32, row norms `[V]`, the squared-error
    scale u -> y `[V]`). With a gain stored apart, u is the direction scaled to unit variance
    per entry (u = y sqrt(d) / |y|, zero rows stay zero); with norm="none", u = y."""
    v, d = y.shape
    rownorm = np.linalg.norm(y, axis=1)
    if norm == "none":
        return y.astype(np.float32), rownorm, np.ones(v)
    scale = np.sqrt(d) / np.maximum(rownorm, 1e-30)
    u = np.where(rownorm[:, None] > 0, y * scale[:, None], 0.0)
    return u.astype(np.float32), rownorm, rownorm ** 2 / d


def row_weights(t: np.ndarray, counts, hidden, opts: VQOptions) -> np.ndarray:
    """`[V]` float64 weights of the rows' errors in the allocation: counts/sum (equal without
    counts), mixed with the head's mean predicted probability (prob_weight), + floor/V."""
    v = len(t)
    w = (np.ones(v) if counts is None else np.asarray(counts, np.float64))
    w = w / max(w.sum(), 1e-30)
    if opts.prob_weight and hidden is not None:
        w = (1 - opts.prob_weight) * w + opts.prob_weight * mean_probability(t, hidden)
    return w + opts.floor / v


def first_codebooks(u: np.ndarray, opts: VQOptions):
    """A codebook per tier by k-means on all rows' groups of u `[V, d]`, and each tier's
    relative distortion `[T]` on a sample of rows: (books [(2^b, g)], dist [T]).

    After the rotation every row's (unit-variance) direction looks alike, so row v's error in
    tier t is |u_v|^2 D_t in the u frame (|y_v|^2 D_t after the gain): the allocation needs no
    coding of every row in every tier."""
    v, d = u.shape
    seed, max_train = opts.seed, opts.max_train
    books, dist = [], np.zeros(len(opts.tiers))
    rng = np.random.default_rng(seed)
    sample = u[rng.choice(v, min(v, max(1, max_train * 16 // d)), replace=False)]
    energy = float(np.mean(np.sum(sample ** 2, 1)))
    for k, (g, b) in enumerate(opts.tiers):
        books.append(kmeans(u.reshape(-1, g), 2 ** b, seed=seed + 1000 * k, iters=opts.iters,
                            max_train=max_train))
        _, e = assign(sample.reshape(-1, g), books[-1])
        dist[k] = e.sum() / len(sample) / max(energy, 1e-30)     # relative error of tier k
    return books, dist


def allocate_tiers(errs: np.ndarray, weight: np.ndarray, tiers, d: int, budget: float,
                   rate: float) -> np.ndarray:
    """Tier per row `[V]` uint8 minimising sum_v weight[v] errs[v, t] (errs `[V, T]`) with
    the rows' code bits within `budget` (`codec.allocate`)."""
    cost = np.array([(d // g) * b for g, b in tiers], np.float64)      # bits a row
    v = len(errs)
    if len(tiers) == 1:
        if cost[0] * v > budget:
            raise QuantizeError(f"rate {rate} leaves {budget / (v * d):.2f} bits per entry; "
                                f"tier {tiers[0]} needs {tiers[0][1] / tiers[0][0]:.2f}")
        return np.zeros(v, np.uint8)
    pick = allocate(errs * weight[:, None], cost, budget)
    if pick is None:
        raise QuantizeError(f"byte budget below the cheapest tier for every row "
                            f"({cost.min():.0f} bits a row)")
    return pick.astype(np.uint8)


def code_tiers(u, tier, wy, books, hess, opts: VQOptions):
    """Per tier: refit its codebook on its rows, then code them -> (books, codes
    [`[V_t, d/g]` int32]). u `[V, d]`, tier `[V]`, wy `[V]` the rows' error weights."""
    d = u.shape[1]
    books, codes = list(books), []
    for k, (g, _) in enumerate(opts.tiers):
        rows = np.flatnonzero(tier == k)
        if len(rows) == 0:
            codes.append(np.zeros((0, d // g), np.int32))
            continue
        books[k], c = code_tier(k, u[rows], wy[rows], books[k], hess, opts)
        codes.append(c)
    return books, codes


def code_tier(k: int, u: np.ndarray, wy: np.ndarray, book: np.ndarray, hess, opts: VQOptions):
    """Tier k's rows u `[n, d]` -> (its codebook `[2^b, g]`, codes `[n, d/g]` int32): k-means
    refit, then nearest codes, or LDLQ rounds against hess `[d, d]` when given."""
    g, b = opts.tiers[k]
    n, d = u.shape
    seed = opts.seed + 1000 * k
    # weighted: each row's groups count by the row's weight times its error scale
    wx = np.repeat(wy, d // g) if opts.weighted else None

    def refit(x, book, seed):
        return kmeans(x, 2 ** b, seed=seed, iters=opts.refit_iters, init=book,
                      max_train=opts.max_train, weights=wx)

    if opts.refit_iters:
        book = refit(u.reshape(-1, g), book, seed + 1)
    if hess is None:
        return book, assign(u.reshape(-1, g), book)[0].reshape(n, d // g)
    a = ldlq_matrices(hess, g)
    c, seen = ldlq(u, book, a)
    for r in range(opts.ldlq_rounds - 1):
        # the codebook refit on what LDLQ rounds (rows with earlier errors fed back, wider
        # than u), then LDLQ again
        book = refit(seen.reshape(-1, g), book, seed + 2 + r)
        c, seen = ldlq(u, book, a)
    return book, c


def decode_directions(books, codes, tier, d: int) -> np.ndarray:
    """The coded rows q `[V, d]` float32 (u's frame) from each tier's codebook and codes."""
    q = np.zeros((len(tier), d), np.float32)
    for k, (book, c) in enumerate(zip(books, codes)):
        rows = np.flatnonzero(tier == k)
        q[rows] = book[c].reshape(len(rows), d)
    return q


def fit_gains(y, rownorm, q, hess, how: str) -> np.ndarray:
    """Each row's gain `[V]` >= 0 mapping its coded direction q `[V, d]` back to y `[V, d]`:
    "norm" keeps |y_v|, "ls" least squares, "hls" least squares in the H metric (with hess;
    else "ls"). 0 for a zero row or a zero code."""
    qq = np.sum(q * q, 1)
    if how == "norm":
        raw = rownorm / np.sqrt(np.maximum(qq, 1e-30))
    elif how == "hls" and hess is not None:
        qh = q @ hess.astype(np.float32)
        qq = np.sum(qh * q, 1)
        raw = np.sum(qh * y, 1) / np.maximum(qq, 1e-30)
    else:
        raw = np.sum(y * q, 1) / np.maximum(qq, 1e-30)
    return np.where((qq > 0) & (rownorm > 0), np.maximum(raw, 0.0), 0.0)


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
        total += np.asarray(_prob_sum(jnp.asarray(hid[i:i + rows]),
                                      jnp.asarray(live[i:i + rows]), tab))
    return total / max(n, 1)


# ----------------------------------------------------------------------------- refinement
def refine(table, mean, rot, tier, codes, books, gain, hidden, *, steps: int, lr: float,
           batch: int = 256, seed: int = 0):
    """Output-aware refinement with the codes fixed: Adam on the codebooks and the log gains
    minimising KL(softmax(h E^T) || softmax(h E_hat^T)) over batches of calibration hidden
    states h (the tied head's logits). Returns (books fp16-exact, gains float32)."""
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
def check_options(options: dict) -> None:
    """ConfigError on an option `vq` does not know or a value it refuses (`RULES`), judged
    before any model loads."""
    VQOptions.checked(options)


def vq_method(table, *, rate=None, rank=None, counts=None, hidden=None,
              **options) -> VQEmbedding:
    """`compress(table, rate=r, method="vq", counts=[V], hidden=[N, d])`: tiered vector codes
    (see the module docstring); counts and hidden are optional calibration."""
    if rank is not None or rate is None:
        raise ConfigError("method vq takes a rate (bytes), not a rank")
    check_options(options)
    v, d = np.shape(table)
    return vq(table, rate=rate, counts=check_counts(counts, v), hidden=check_hidden(hidden, d),
              **options)
