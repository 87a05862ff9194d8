"""Quantised embedding tables, budget-matched in BYTES.

A table `[V, d]` is stored as, per row v, `bits[v]`-bit codes in groups of `group` columns, each
group with an fp16 scale and offset (asymmetric uniform levels):

    y[v, j] = code[v, j] * scale[v, j // group] + offset[v, j // group]
    table   = y @ R^T + mean                   (R: random orthogonal from `seed`, optional)

The frame (centre, rotate), the Lagrangian allocation and the packing are shared with the
vector codes (codec.py). Options, each measured in `bench/quality_explore.py`:
  rotate   a random orthogonal rotation of the d axis before quantising (QuIP / QuaRot): it
           spreads rare large entries over the whole row (heavy tails -> near Gaussian), so
           they no longer set the row's range; regenerated from the seed, so it costs 8 bytes
           (the seed), not d*d floats. For the tied head it folds: h @ E^T = (h R) Y^T.
  center   subtract the mean row first (d fp32), which dominates SmolLM2's spectrum.
  clip     per group, search the range shrink that minimises the squared error (vs min/max).
  allocation  how bits are shared among rows: "uniform" (the same width for every row),
           "error" (a Lagrangian allocation minimising the total squared error under the byte
           budget, which spends it exactly) or "frequency" (the same, each row's error weighted
           by its token count `counts [V]` on calibration text: frequent rows precise, the long
           tail coarse).
  hidden   final hidden states `[N, d]` on calibration text: GPTQ on the table seen as the tied
           head's weight (logits h @ E^T), minimising E[(h . (e_v - q_v))^2] per row.

Bytes, as stored packed: ceil(d * bits[v] / 8) per row for the codes, 4 per group (fp16 scale
and offset), V/2 for the per-row bit widths when they vary (4 bits each), 4*d for the mean when
centred, 8 for the rotation seed when rotated: exactly what `export()` saves
(`codec.pack_rows`).
In memory the codes are unpacked uint8 `[V, d]`, one byte a code whatever its width: the tied
head (`attend`, `attend_chunk`) reads them a block of rows at a time, each block converted to
floats in cache and dotted at once, the scales and offsets folded out of the dot, so a decode
step reads V*d bytes of codes and never writes a `[V, d]` float table. Two 4-bit codes a byte
(half the bytes) measured slower: unpacking them in XLA costs more than the bytes it saves
(docs/speed.md, "Decoding from codes").
rate = V * d * 4 / storage_bytes().

Registered methods (dirjax.compress.METHODS): quant (rotate + center + clip, allocation
"error"), quant_freq (allocation "frequency"), quant_gptq (quant_freq + GPTQ on calibration
hidden states, head_weight 0.5). Other combinations: bench/quality_explore.py. SmolLM2-135M
at rate 10, 4k tokens of WikiText-2 test, input + tied head replaced (original 30.64): plain
int3 RTN 141, + rotation and mean 46.6, + widths by error 40.8, + by frequency 34.3, + GPTQ 32.2;
truncated SVD 36,406. On 16k tokens (original 28.82): quant_gptq 30.02, quant_freq 31.80.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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
    head_hessian,
    integer,
    inverse_cholesky,
    logits_by_blocks,
    number,
    optional,
    pack_codes,
    pack_rows,
    packed_bytes,
    random_rotation,
    sum_dtype,
    unpack_codes,
    unpack_rows,
    unrotate,
)
from dirjax.embedding import Described
from dirjax.errors import ConfigError

MAX_BITS = 8
CLIP_GRID = np.linspace(1.0, 0.5, 6)    # range shrink factors tried per group when clip=True
QUANT_ROWS = 512                         # rows (groups) rounded at a time: cache-sized temporaries


# ----------------------------------------------------------------------------- the module
class QuantizedEmbedding(nnx.Module, Described, RotatedHead):
    """Codes uint8 `[V, d]`, bits uint8 `[V]`, scale/offset fp16 `[V, G]`, mean `[d]`,
    R `[d, d]`."""
    # what end-to-end refinement trains with the codes fixed (dirjax/compress/e2e.py)
    CONTINUOUS = ("scale", "offset", "mean")

    def __init__(self, codes, bits, scale, offset, group, mean=None, rotation=None, seed=0, *,
                 method: str = "quant", metrics: dict | None = None, meta: dict | None = None):
        self.method = method
        self.metrics = metrics
        self.meta = meta
        self.codes = nnx.Variable(jnp.asarray(codes, jnp.uint8))
        self.bits = nnx.Variable(jnp.asarray(bits, jnp.uint8))
        self.scale = nnx.Variable(jnp.asarray(scale, jnp.float16))
        self.offset = nnx.Variable(jnp.asarray(offset, jnp.float16))
        self.group = int(group)
        self.mean = None if mean is None else nnx.Variable(jnp.asarray(mean, jnp.float32))
        self.rotation = (None if rotation is None
                         else nnx.Variable(jnp.asarray(rotation, jnp.float32)))
        self.seed = int(seed)

    def export(self) -> tuple[dict, dict]:
        """(arrays, static fields) for `store.save_compressed`, in the packed form that
        `storage_bytes` counts: each row's codes bit-packed at its own width
        (`pack_rows`), the widths as 4-bit fields (none when every row has the same width:
        that one width is a static field), fp16 scale/offset, the mean row. The rotation is
        saved as the seed it is drawn from and drawn again on restore."""
        codes, bits = np.asarray(self.codes[...]), np.asarray(self.bits[...])
        arrays = {"packed_codes": pack_rows(codes, bits)}
        uniform = bool(np.all(bits == bits[0]))
        if not uniform:
            arrays["widths"] = pack_codes(bits, 4)
        arrays["scale"] = np.asarray(self.scale[...])
        arrays["offset"] = np.asarray(self.offset[...])
        if self.mean is not None:
            arrays["mean"] = np.asarray(self.mean[...])
        return arrays, {"group": self.group, "seed": self.seed,
                        "rotate": self.rotation is not None, "packed": True,
                        "width": int(bits[0]) if uniform else None,
                        "vocab": int(codes.shape[0]), "features": int(codes.shape[1])}

    @classmethod
    def restore(cls, arrays: dict, static: dict, **described) -> "QuantizedEmbedding":
        """From `export()`'s packed arrays, or from the first saved form (unpacked uint8
        `codes [V, d]` and `bits [V]`)."""
        if static.get("packed"):
            v, d = static["vocab"], static["features"]
            bits = (np.full(v, static["width"], np.uint8) if static.get("width") is not None
                    else unpack_codes(arrays["widths"], 4, (v,)).astype(np.uint8))
            codes = unpack_rows(arrays["packed_codes"], bits, d, MAX_BITS)
        else:
            codes, bits = arrays["codes"], arrays["bits"]
            d = codes.shape[1]
        rotation = random_rotation(d, static["seed"]) if static["rotate"] else None
        return cls(codes, bits, arrays["scale"], arrays["offset"],
                   static["group"], arrays.get("mean"), rotation, static["seed"], **described)

    @property
    def vocab_size(self) -> int:
        return self.codes.shape[0]

    @property
    def features(self) -> int:
        return self.codes.shape[1]

    def _rows(self, codes, scale, offset, dtype):
        """Dequantised rows in the rotated, centred frame: codes `[..., d]`, scale/offset
        `[..., G]` -> `[..., d]` of `dtype`."""
        lead, g = codes.shape[:-1], self.group
        y = codes.astype(dtype).reshape(*lead, -1, g)
        y = y * scale.astype(dtype)[..., None] + offset.astype(dtype)[..., None]
        return y.reshape(*lead, self.features)

    def table(self):
        """The dequantised table `[V, d]` float32."""
        y = self._rows(self.codes[...], self.scale[...], self.offset[...], jnp.float32)
        return unrotate(y, self.rotation, self.mean)

    def __call__(self, ids):
        # Decode only the looked-up rows: [B, T] -> [B, T, d].
        def take(x):
            return jnp.take(x[...], ids, axis=0)
        y = self._rows(take(self.codes), take(self.scale), take(self.offset), jnp.float32)
        return unrotate(y, self.rotation, self.mean)

    def attend(self, h):
        """Tied-head logits `[..., V]` = h @ table^T, read from the codes (`attend_chunk`), in
        h's dtype."""
        return self.attend_chunk(h, 0, self.vocab_size).astype(h.dtype)

    def attend_chunk(self, h, start, size: int, frame=None):
        """The logits `[..., size]` of rows start..start+size-1 (start may be traced; clamped
        as `lax.dynamic_slice` clamps it), read from the codes, never through a `[V, d]`
        float table.

        The rotation and the mean fold out of the table (h R and h . mean, once per token).
        Decoding (fewer than `codec.SCORE_TOKENS` tokens): each group's scale and offset fold
        out of the dot too: with h R cut into groups h_g,
            logits_v = sum_g scale_vg (codes_vg . h_g) + offset_vg sum(h_g),
        so a block's codes are only converted to floats (in cache) and dotted
        (`codec.logits_by_blocks`), in fp32: the step reads the uint8 codes and the fp16
        scales once. Scoring (more tokens): the chunk's rows are decoded once, `[size, d]`,
        and multiplied as a dense table's chunk is (`codec.chunk_product`: bf16 operands
        summed in fp32 when scoring bf16 states), where folding the scales would cost passes
        over the `[n, size]` logits. Returned in fp32 (at least): a bf16 evaluation's
        log-sum-exp reads unrounded logits."""
        hr, base = self.frame(h) if frame is None else frame
        start = chunk_start(start, size, self.vocab_size)
        n, groups = hr.shape[0], self.features // self.group
        if n >= SCORE_TOKENS:
            y = self._rows(*(jax.lax.dynamic_slice_in_dim(x[...], start, size, axis=0)
                             for x in (self.codes, self.scale, self.offset)), jnp.float32)
            out = chunk_product(hr, y)
        else:
            hg = hr.reshape(n, groups, self.group)
            hsum = hg.sum(-1)                                             # [n, G]

            def block(first, count):
                def rows(x):
                    return jax.lax.dynamic_slice_in_dim(x[...], first, count, axis=0)
                codes = rows(self.codes).astype(hr.dtype).reshape(count, groups, self.group)
                dots = group_dots(hg, codes)                              # [G, n, count]
                scale = rows(self.scale).astype(hr.dtype)
                return (dots * scale.T[:, None, :]).sum(0) + hsum @ rows(self.offset).astype(
                    hr.dtype).T

            out = logits_by_blocks(block, n, sum_dtype(hr), start, size)
        if base is not None:
            out = out + base[:, None]
        return out.reshape(*h.shape[:-1], size)

    def num_params(self) -> int:
        """Stored numbers (codes, scales, offsets, mean); the rotation is a seed."""
        n = self.codes.size + self.scale.size + self.offset.size
        return int(n + (0 if self.mean is None else self.mean.size))

    def storage_bytes(self) -> int:
        return storage_bytes(np.asarray(self.bits[...]), self.features, self.group,
                             mean=self.mean is not None, rotate=self.rotation is not None)


def group_dots(hg, codes):
    """hg `[n, G, g]` . codes `[count, G, g]` per group -> `[G, n, count]`, in the product
    XLA:CPU runs fastest (Gemma 3's table, docs/speed.md): one token and one group, the
    matrix-vector product (h on the left, as a plain 2-D product: with the group as a batch
    dimension it ran 10x slower); otherwise the codes on the left, which XLA:CPU multiplies by
    a few rows faster than the other way round."""
    if hg.shape[0] <= 1 and hg.shape[1] == 1:
        return (hg[:, 0] @ codes[:, 0].T)[None]
    dims = (((2,), (2,)), ((1,), (1,)))
    return jnp.swapaxes(jax.lax.dot_general(codes, hg, dims), 1, 2)


def storage_bytes(bits: np.ndarray, d: int, group: int, *, mean: bool, rotate: bool) -> int:
    """Bytes as stored packed, for per-row bit widths `bits [V]` (see the module docstring)."""
    codes = int(np.sum(packed_bytes(d, bits)))
    mixed = not np.all(bits == bits[0])
    return codes + overhead_bytes(bits.shape[0], d, group, mixed=mixed, mean=mean, rotate=rotate)


def overhead_bytes(v: int, d: int, group: int, *, mixed: bool, mean: bool, rotate: bool) -> int:
    """Everything but the codes: fp16 scale+offset per group, width nibbles, mean, seed."""
    params = v * (d // group) * 4
    widths = (v + 1) // 2 if mixed else 0
    return params + widths + (4 * d if mean else 0) + (8 if rotate else 0)


# ----------------------------------------------------------------------------- rounding
def _params(x: np.ndarray, bits: np.ndarray, clip: bool):
    """Scale and offset (fp16-rounded) of groups x `[N, g]` at `bits [N]`, MSE-clipped if asked.

    Returns (scale [N], offset [N]) as float32 holding fp16 values. Computed QUANT_ROWS
    groups at a time (each group's figures are its own: the same result, small temporaries).
    """
    if len(x) <= QUANT_ROWS:
        return _params_block(x, bits, clip)
    parts = [_params_block(x[i:i + QUANT_ROWS], bits[i:i + QUANT_ROWS], clip)
             for i in range(0, len(x), QUANT_ROWS)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _params_block(x: np.ndarray, bits: np.ndarray, clip: bool):
    lo, hi = x.min(1), x.max(1)
    levels = (2.0 ** bits - 1)
    best = None
    for a in (CLIP_GRID if clip else CLIP_GRID[:1]):
        mid = (hi + lo) / 2
        bottom, top = mid + a * (lo - mid), mid + a * (hi - mid)
        s = ((top - bottom) / levels).astype(np.float16).astype(np.float32)
        s = np.where(s > 0, s, 1.0)       # a constant group (e.g. an all-zero row): codes 0
        o = bottom.astype(np.float16).astype(np.float32)
        q = np.clip(np.rint((x - o[:, None]) / s[:, None]), 0, levels[:, None])
        err = ((q * s[:, None] + o[:, None] - x) ** 2).sum(1)
        if best is None:
            best = (err, s, o)
        else:
            keep = err < best[0]
            best = tuple(np.where(keep, new, old) for new, old in zip((err, s, o), best))
    return best[1], best[2]


def _codes(x, bits, scale, offset):
    """Codes of x `[N, g]` given per-group scale/offset `[N]` and bits `[N]`."""
    levels = (2.0 ** bits - 1)[:, None]
    return np.clip(np.rint((x - offset[:, None]) / scale[:, None]), 0, levels)


def quantize_rows(y: np.ndarray, bits: np.ndarray, group: int, clip: bool = True):
    """Round to nearest: y `[V, d]`, bits `[V]` -> codes `[V, d]`, scale/offset `[V, G]`.

    QUANT_ROWS rows at a time: every step is per row, so the result is the same as on the
    whole table, while the float64 temporaries of the clip search stay in cache (a
    262,144-row table took 1.3 GB per float64 temporary, and 1.4-2.7x as long, in one piece)."""
    v, d = y.shape
    codes = np.empty((v, d), np.uint8)
    scale = np.empty((v, d // group), np.float32)
    offset = np.empty((v, d // group), np.float32)
    for i in range(0, v, QUANT_ROWS):
        rows = slice(i, i + QUANT_ROWS)
        x = y[rows].reshape(-1, group)
        b = np.repeat(bits[rows].astype(np.float64), d // group)
        s, o = _params(x, b, clip)
        codes[rows] = _codes(x, b, s, o).reshape(-1, d).astype(np.uint8)
        scale[rows], offset[rows] = s.reshape(-1, d // group), o.reshape(-1, d // group)
    return codes, scale, offset


def dequantize(codes, scale, offset, group):
    """codes `[V, d]`, scale/offset `[V, G]` -> rows `[V, d]` float32."""
    v, d = codes.shape
    y = codes.reshape(v, d // group, group) * scale[..., None] + offset[..., None]
    return y.reshape(v, d).astype(np.float32)


def gptq_rows(y: np.ndarray, bits: np.ndarray, group: int, hess: np.ndarray, clip: bool = True,
              damp: float = 0.01, block: int = 64):
    """GPTQ (Frantar et al. 2022): quantise columns in order, pushing each column's error onto
    the columns not yet quantised so that E[(h . (y_v - q_v))^2] with E[h h^T] = hess `[d, d]`
    is small. Group scale/offset are fixed when the group starts, from the updated rows."""
    v, d = y.shape
    w = y.astype(np.float64).copy()
    hinv = inverse_cholesky(hess, damp)                       # upper: H^-1 = U^T U
    levels = (2.0 ** bits - 1)[:, None]
    codes = np.zeros((v, d), np.uint8)
    scale = np.zeros((v, d // group), np.float32)
    offset = np.zeros((v, d // group), np.float32)
    bf = bits.astype(np.float64)
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        err_blk = np.zeros((v, b1 - b0))
        for j in range(b0, b1):
            if j % group == 0:
                s, o = _params(w[:, j:j + group], bf, clip)
                scale[:, j // group], offset[:, j // group] = s, o
            s, o = scale[:, j // group], offset[:, j // group]
            q = np.clip(np.rint((w[:, j] - o) / s), 0, levels[:, 0])
            codes[:, j] = q
            e = (w[:, j] - (q * s + o)) / hinv[j, j]
            w[:, j + 1:b1] -= np.outer(e, hinv[j, j + 1:b1])
            err_blk[:, j - b0] = e
        w[:, b1:] -= err_blk @ hinv[b0:b1, b1:]
    return codes, scale, offset


# ----------------------------------------------------------------------------- bit widths
def width_errors(y: np.ndarray, group: int, clip: bool) -> np.ndarray:
    """`[V, MAX_BITS+1]`: each row's squared rounding error at each width (column 0 unused),
    a slice of rows at a time (in cache, the same result)."""
    v = len(y)
    errs = np.zeros((v, MAX_BITS + 1))
    for i in range(0, v, QUANT_ROWS):
        rows = y[i:i + QUANT_ROWS]
        for b in range(1, MAX_BITS + 1):
            c, s, o = quantize_rows(rows, np.full(len(rows), b), group, clip)
            errs[i:i + len(rows), b] = ((dequantize(c, s, o, group) - rows) ** 2).sum(1)
    return errs


def allocate_bits(errs: np.ndarray, weight: np.ndarray, d: int, budget_code_bytes: int):
    """Bits per row `[V]` uint8 minimising sum_v weight[v] * errs[v, b] s.t. code bytes <=
    budget (errs `[V, MAX_BITS+1]`, index = bits; weight `[V]` >= 0): `codec.allocate`."""
    widths = np.arange(1, MAX_BITS + 1)
    pick = allocate(errs[:, 1:] * weight[:, None], packed_bytes(d, widths), budget_code_bytes)
    if pick is None:
        raise QuantizeError("byte budget below 1 bit per weight")
    return widths[pick].astype(np.uint8)


def uniform_bits(code_budget: int, v: int, d: int, rate: float) -> np.ndarray:
    """The one width `[V]` uint8 that fits the code budget (at most MAX_BITS)."""
    b = int(code_budget * 8 // (v * d))
    if b < 1:
        raise QuantizeError(f"rate {rate} leaves {code_budget * 8 / (v * d):.2f} bits per weight")
    return np.full(v, min(b, MAX_BITS), np.uint8)


# ----------------------------------------------------------------------------- the method
ALLOCATIONS = ("uniform", "error", "frequency")


def quantize(table, *, rate: float, seed: int = 0, group: int | None = None, rotate: bool = True,
             center: bool = True, clip: bool = True, allocation: str = "uniform", counts=None,
             hidden=None, floor: float = 1.0, head_weight: float = 0.0) -> QuantizedEmbedding:
    """Quantise `table [V, d]` into at most V*d*4/rate bytes.

    group: columns per scale/offset (default: the whole row, d).
    allocation: "uniform" | "error" | "frequency" (module docstring); "frequency" needs
      counts `[V]`, row weight = counts/sum + floor/V (floor keeps the tail, which every
      softmax sees, from collapsing).
    hidden `[N, d]`: calibration final hidden states -> GPTQ with H = (1-a) I/d + a hh^T/tr,
      a = head_weight in [0, 1] (0 = plain squared error, the input side's metric).
    Deterministic per seed (the seed only draws the rotation).
    """
    t = check_table(table)
    v, d = t.shape
    group = d if group is None else int(group)
    if d % group:
        raise ConfigError(f"group {group} must divide d={d}")
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if allocation == "frequency" and counts is None:
        raise ConfigError("allocation 'frequency' needs counts= (token counts [V] on calibration "
                          "text disjoint from the evaluation text; dirjax.compress.calib)")
    budget = int(v * d * 4 / rate)
    mixed = allocation != "uniform"
    code_budget = budget - overhead_bytes(v, d, group, mixed=mixed, mean=center, rotate=rotate)
    y, mean, rot = centre_and_rotate(t, center=center, rotate=rotate, seed=seed)
    if mixed:
        w = np.ones(v) if allocation == "error" else np.asarray(counts, np.float64)
        w = w / max(w.sum(), 1.0) + floor / v
        bits = allocate_bits(width_errors(y, group, clip), w, d, code_budget)
    else:
        bits = uniform_bits(code_budget, v, d, rate)
    if hidden is not None and head_weight > 0:
        hess = head_hessian(hidden, rot, head_weight)
        codes, scale, offset = gptq_rows(y, bits, group, hess, clip)
    else:
        codes, scale, offset = quantize_rows(y, bits, group, clip)
    emb = QuantizedEmbedding(codes, bits, scale, offset, group, mean, rot, seed)
    assert emb.storage_bytes() <= budget, (emb.storage_bytes(), budget)
    return emb


# ----------------------------------------------------------------------------- registered methods
# every option's type and range, judged before any model loads (group's divisibility of d is
# judged when the table is known)
RULES = {"seed": integer(0), "group": optional(integer(1)), "rotate": BOOL, "center": BOOL,
         "clip": BOOL, "allocation": choice(*ALLOCATIONS), "floor": number(0)}


def check_quant(options: dict) -> None:
    # quant has no counts: "frequency" is quant_freq
    check_values("quant", options, {**RULES, "allocation": choice("uniform", "error")})


def check_quant_freq(options: dict) -> None:
    check_values("quant_freq", options, RULES)


def check_quant_gptq(options: dict) -> None:
    check_values("quant_gptq", options, {**RULES, "head_weight": number(0, 1)})


def _rate(method: str, rate, rank) -> float:
    if rank is not None or rate is None:
        raise ConfigError(f"method {method} takes a rate (stored bytes), not a rank")
    return rate


def quant_method(table, *, rate=None, rank=None, seed: int = 0, **options) -> QuantizedEmbedding:
    """`compress(table, rate=r, method="quant")`: rotation + mean row + per-row int-b codes,
    bits per row allocated by squared error so the byte budget is spent exactly."""
    check_quant({"seed": seed, **options})
    options.setdefault("allocation", "error")
    return quantize(table, rate=_rate("quant", rate, rank), seed=seed, **options)


def quant_freq_method(table, *, rate=None, rank=None, seed: int = 0, counts=None,
                      **options) -> QuantizedEmbedding:
    """`compress(table, rate=r, method="quant_freq", counts=[V])`: bits per row by token
    frequency on calibration text (see `dirjax.compress.calib.collect`)."""
    check_quant_freq({"seed": seed, **options})
    options.setdefault("allocation", "frequency")
    counts = check_counts(counts, np.shape(table)[0], "quant_freq")
    return quantize(table, rate=_rate("quant_freq", rate, rank), seed=seed, counts=counts,
                    **options)


def quant_gptq_method(table, *, rate=None, rank=None, seed: int = 0, counts=None, hidden=None,
                      head_weight: float = 0.5, **options) -> QuantizedEmbedding:
    """`compress(..., method="quant_gptq", counts=[V], hidden=[N, d])`: quant_freq's widths,
    codes chosen by GPTQ against H = (1-a) I/d + a E[h h^T]/tr, a = head_weight: half plain
    squared error (the input side), half the tied head's logit error on calibration states."""
    check_quant_gptq({"seed": seed, "head_weight": head_weight, **options})
    rate = _rate("quant_gptq", rate, rank)
    v, d = np.shape(table)
    hidden = check_hidden(hidden, d, "quant_gptq")
    options.setdefault("allocation", "frequency")
    return quantize(table, rate=rate, seed=seed, counts=check_counts(counts, v, "quant_gptq"),
                    hidden=hidden, head_weight=head_weight, **options)
