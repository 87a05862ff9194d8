"""What the scalar (quantize.py) and the vector (vq.py) quantisers share.

- the table check and the frame both code in: y = (t - mean) R, R a random orthogonal `[d, d]`
  drawn from a seed (stored as the seed), and back: t = y R^T + mean;
- the output-aware metric H = (1 - a) I/d + a E[h h^T]/tr of calibration states h, and the
  damped inverse Cholesky factor that GPTQ and LDLQ push each rounding error with;
- one Lagrangian allocation: each row picks the option (bit width, tier) minimising its
  weighted error + lam * its cost, lam bisected so the rows spend the budget;
- the calibration checks (`counts [V]`, `hidden [N, d]`);
- one bit packer: codes as little-endian `bits`-bit fields, the byte layout every saved
  quantised embedding uses (`pack_codes`: a flat run; `pack_rows`: rows at their own widths,
  each padded to a byte);
- the tied heads that read codes (`logits_by_blocks`, `class_logits`): logits `h @ table^T`
  computed a cache-sized block of rows at a time, straight from the codes, so a decode step
  never writes a `[V, d]` float table; and the dtype their products read (`bf16_products`:
  bf16 operands summed in fp32 when scoring under compute_dtype "bfloat16", fp32 otherwise);
- the option checks: every option's type and range, judged before any model loads.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dirjax.embedding import dot_f32
from dirjax.errors import ConfigError, DataError, WeightsError

HEAD_ROWS = 1024      # table rows a head decodes at a time (see `logits_by_blocks`)
BF16_TOKENS = 64      # bf16 operands from this many tokens a product on (`bf16_products`)
SCORE_TOKENS = BF16_TOKENS   # from this many tokens a head decodes its chunk once (scoring)
MAX_BISECT = 90        # bisection steps of log10(lam) over [-40, 40]: far below fp64 resolution
PACK_CODES = 1 << 22   # codes bit-packed at a time (bounds the [codes, bits] temporary)


class QuantizeError(ConfigError):
    """A rate the quantiser cannot meet (fewer than 1 bit per weight left)."""


# ----------------------------------------------------------------------------- the frame
def check_table(table) -> np.ndarray:
    """`table` as float32 `[V, d]`; DataError unless it is finite, non-empty and 2-D."""
    t = np.asarray(table, np.float32)
    if t.ndim != 2 or t.size == 0 or not np.all(np.isfinite(t)):
        raise DataError(f"table must be a finite non-empty [V, d] array, got shape {t.shape}")
    return t


def random_rotation(d: int, seed: int) -> np.ndarray:
    """A random orthogonal `[d, d]` (Haar, via QR with sign fix), deterministic per seed."""
    g = np.random.default_rng(seed).standard_normal((d, d))
    q, r = np.linalg.qr(g)
    return (q * np.sign(np.diag(r))).astype(np.float32)


def centre_and_rotate(t: np.ndarray, *, center: bool, rotate: bool, seed: int):
    """t `[V, d]` float32 -> (y = (t - mean) R `[V, d]` float32, mean `[d]` or None,
    R `[d, d]` or None). The rotation spreads rare large entries over the whole row (heavy
    tails -> near Gaussian); the mean row dominates some tables' spectra."""
    mean = t.mean(0) if center else None
    y = t - mean if center else t
    rot = random_rotation(t.shape[1], seed) if rotate else None
    return (y @ rot if rotate else y), mean, rot


def bf16_products(dtype, tokens: int) -> bool:
    """Whether a product of `tokens` rows of `dtype` against a table (a head's decoded block,
    a rotation) reads bf16 operands and sums in fp32 (`dot_f32`): when `dtype` is bf16 (the
    state cast by compute_dtype "bfloat16") and it spans at least BF16_TOKENS tokens
    (scoring), where bf16 runs at the matrix units' rate. Fewer tokens (decoding) compute in
    fp32 as before: such a product is bound by reading the codes, and XLA:CPU's bf16
    matrix-vector product is ~10x slower than its fp32 one (docs/speed.md)."""
    return jnp.dtype(dtype) == jnp.bfloat16 and tokens >= BF16_TOKENS


def unrotate(y, rotation, mean):
    """Rows `[..., d]` in the rotated, centred frame back to table rows: y R^T + mean
    (`rotation` / `mean`: arrays or nnx Variables, or None). A bf16 rotation (compute_dtype
    "bfloat16") rotates many rows with bf16 operands summed in fp32 (`bf16_products`), y
    (decoded exactly, in fp32) as two bf16 terms hi + lo, ~16 bits: y rounded to bf16 once
    moved Gemma 3's quant_gptq rate 10 bf16 perplexity by +0.4% (21.83; the pair 21.76, an
    fp32 lookup 21.75, all fp32 21.70; 1,024 WikiText-2 tokens); 2 d*d per row, next to a
    head's V*d."""
    if rotation is not None:
        r = rotation[...]
        if bf16_products(r.dtype, y.size // max(y.shape[-1], 1)):
            hi = y.astype(r.dtype)
            lo = (y - hi.astype(y.dtype)).astype(r.dtype)
            y = dot_f32(hi, r.T) + dot_f32(lo, r.T)
        else:
            y = y @ r.T
    if mean is not None:
        y = y + mean[...]
    return y


# ----------------------------------------------------------------------------- the metric
def head_hessian(hidden: np.ndarray, rot, head_weight: float) -> np.ndarray:
    """H = (1 - a) I/d + a hh^T/tr(hh^T) `[d, d]` float64 of states `[N, d]` in the rotated
    frame: a = 0 is plain squared error (the input side's metric), a = 1 the tied head's
    logit error E[(h . (e_v - q_v))^2]."""
    hd = np.asarray(hidden, np.float64)
    hd = hd @ rot if rot is not None else hd
    hh = hd.T @ hd
    d = hh.shape[0]
    return (1 - head_weight) * np.eye(d) / d + head_weight * hh / np.trace(hh)


def inverse_cholesky(hess: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Upper U `[d, d]` with (H + damp mean(diag H) I)^-1 = U^T U (the damping keeps a
    rank-deficient H of few calibration states invertible)."""
    d = hess.shape[0]
    h = hess.astype(np.float64) + damp * np.mean(np.diag(hess)) * np.eye(d)
    return np.linalg.cholesky(np.linalg.inv(h)).T


# ----------------------------------------------------------------------------- allocation
def allocate(err: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray | None:
    """The option k of each row minimising sum_v err[v, k_v] s.t. sum_v cost[k_v] <= budget.

    err `[V, K]` (weights applied), cost `[K]`. Lagrangian: each row picks
    argmin_k err + lam cost, lam bisected on a log scale (the cost spent falls as lam grows);
    the smallest lam that fits spends the budget. Returns k `[V]` int64, or None when even
    the cheapest option for every row does not fit."""
    def pick(lam):
        return np.argmin(err + lam * cost[None], axis=1)

    if cost[pick(1e30)].sum() > budget:
        return None
    lo, hi = -40.0, 40.0
    for _ in range(MAX_BISECT):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost[pick(10 ** mid)].sum() > budget else (lo, mid)
    return pick(10 ** hi)


# ----------------------------------------------------------------------------- calibration
CALIB = "on calibration text disjoint from the evaluation text; dirjax.compress.calib"


def check_counts(counts, v: int, method: str | None = None) -> np.ndarray | None:
    """counts `[V]` as float64; None stays None unless `method` needs them (ConfigError)."""
    if counts is None:
        if method is not None:
            raise ConfigError(f"method {method} needs counts= (token counts [V] {CALIB})")
        return None
    counts = np.asarray(counts, np.float64)
    if counts.shape != (v,) or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise DataError(f"counts must be [V={v}] finite and non-negative, got {counts.shape}")
    return counts


def check_hidden(hidden, d: int, method: str | None = None) -> np.ndarray | None:
    """hidden `[N, d]` as float32; None stays None unless `method` needs them (ConfigError)."""
    if hidden is None:
        if method is not None:
            raise ConfigError(f"method {method} needs hidden= (final hidden states [N, d] of "
                              f"the original model {CALIB})")
        return None
    hidden = np.asarray(hidden, np.float32)
    if hidden.ndim != 2 or hidden.shape[1] != d or not np.all(np.isfinite(hidden)):
        raise DataError(f"hidden must be finite [N, d={d}], got {hidden.shape}")
    return hidden


# ----------------------------------------------------------------------------- bit packing
def packed_bytes(n, bits):
    """Bytes of n codes of `bits` bits packed back to back: ceil(n * bits / 8) (arrays too)."""
    return (np.asarray(n, np.int64) * bits + 7) // 8


def _holder(bits: int):
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


def pack_block(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes `[n, m]` (< 2**bits) -> uint8 `[n, ceil(m * bits / 8)]`: each row's codes as
    `bits`-bit little-endian fields, the row padded to a byte with zeros."""
    n, m = codes.shape
    dt = _holder(bits)
    shifts = np.arange(bits, dtype=dt)
    out = np.empty((n, int(packed_bytes(m, bits))), np.uint8)
    step = max(1, PACK_CODES // max(m, 1))
    for i in range(0, n, step):
        planes = (codes[i:i + step].astype(dt)[..., None] >> shifts) & 1      # [rows, m, bits]
        out[i:i + step] = np.packbits(planes.reshape(len(planes), -1), axis=1,
                                      bitorder="little")
    return out


def unpack_block(packed: np.ndarray, bits: int, m: int) -> np.ndarray:
    """Inverse of `pack_block`: uint8 `[n, >= ceil(m * bits / 8)]` -> codes `[n, m]`."""
    n = packed.shape[0]
    dt = _holder(bits)
    weights = (1 << np.arange(bits)).astype(dt)
    out = np.empty((n, m), dt)
    step = max(1, PACK_CODES // max(m, 1))
    for i in range(0, n, step):
        planes = np.unpackbits(packed[i:i + step], axis=1, count=m * bits, bitorder="little")
        out[i:i + step] = (planes.reshape(-1, m, bits) * weights).sum(-1, dtype=dt)
    return out


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (any shape, < 2**bits) -> uint8 `[ceil(size * bits / 8)]`, back to back."""
    c = np.asarray(codes).reshape(-1)
    # padded to whole bytes of 8 codes: each row of 8 codes is then `bits` bytes, no padding
    rows = np.zeros(-(-c.size // 8) * 8, c.dtype)
    rows[:c.size] = c
    return pack_block(rows.reshape(-1, 8), bits).reshape(-1)[:int(packed_bytes(c.size, bits))]


def unpack_codes(packed: np.ndarray, bits: int, shape) -> np.ndarray:
    """Inverse of `pack_codes`: int32 codes of `shape`."""
    n = int(np.prod(shape))
    need = int(packed_bytes(n, bits))
    packed = np.asarray(packed, np.uint8).reshape(-1)
    if packed.size < need:
        raise WeightsError(f"packed codes hold {packed.size} bytes, {n} codes of {bits} bits "
                           f"need {need}")
    rows = np.zeros(-(-n // 8) * bits, np.uint8)        # whole rows of 8 codes, as packed
    rows[:need] = packed[:need]
    codes = unpack_block(rows.reshape(-1, bits), bits, 8).reshape(-1)[:n]
    return codes.astype(np.int32).reshape(shape)


def _row_starts(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def pack_rows(codes: np.ndarray, bits: np.ndarray, rows_at_once: int = 8192) -> np.ndarray:
    """codes `[V, d]` (row v < 2**bits[v]) -> one uint8 buffer, row after row, each row
    `pack_block`ed at its own width bits[v] (ceil(d * bits[v] / 8) bytes)."""
    sizes = packed_bytes(codes.shape[1], bits)
    starts = _row_starts(sizes)
    out = np.zeros(int(sizes.sum()), np.uint8)
    for b in np.unique(bits):
        rows = np.flatnonzero(bits == b)
        for i in range(0, len(rows), rows_at_once):     # bounds the [rows, bytes] index array
            r = rows[i:i + rows_at_once]
            packed = pack_block(codes[r], int(b))
            out[starts[r][:, None] + np.arange(packed.shape[1])] = packed
    return out


def unpack_rows(buffer: np.ndarray, bits: np.ndarray, d: int, max_bits: int = 8,
                rows_at_once: int = 8192) -> np.ndarray:
    """Inverse of `pack_rows`: -> codes `[V, d]` uint8; WeightsError when the buffer does
    not hold the widths' bytes."""
    buffer = np.asarray(buffer, np.uint8).reshape(-1)
    bits = np.asarray(bits)
    sizes = packed_bytes(d, bits)
    if buffer.size != int(sizes.sum()) or np.any(bits < 1) or np.any(bits > max_bits):
        raise WeightsError(f"packed codes hold {buffer.size} bytes, the row widths need "
                           f"{int(sizes.sum())} (widths {bits.min()}..{bits.max()})")
    starts = _row_starts(sizes)
    codes = np.zeros((bits.shape[0], d), np.uint8)
    for b in np.unique(bits):
        rows = np.flatnonzero(bits == b)
        for i in range(0, len(rows), rows_at_once):
            r = rows[i:i + rows_at_once]
            packed = buffer[starts[r][:, None] + np.arange(int(sizes[r[0]]))]
            codes[r] = unpack_block(packed, int(b), d)
    return codes


# ----------------------------------------------------------------------------- heads on codes
def head_frame(h, rotation, mean):
    """Hidden states `[..., d]` in the frame the codes live in: (h R `[n, d]` flattened,
    h . mean `[n]` or None). The rotation and the mean fold out of the table, so they cost
    d*d and d per token instead of V*d: h @ (Y R^T + mean)^T = (h R) Y^T + h . mean.

    The head's products read h R's dtype and sum in `sum_dtype(h R)`. Scoring bf16 states
    (`bf16_products`: compute_dtype "bfloat16"), h R is bf16 (summed in fp32, rounded once)
    and h . mean an fp32 sum; otherwise both are fp32 at least (decoding: a few tokens' head
    is bound by its codes' bytes, and fp32 keeps a bf16 model's logits as close as its
    table's)."""
    if bf16_products(h.dtype, h.size // max(h.shape[-1], 1)):
        flat = h.reshape(-1, h.shape[-1])
        hr = flat if rotation is None else dot_f32(flat, rotation[...].astype(flat.dtype))
        f32 = jnp.float32
        base = None if mean is None else (flat.astype(f32) * mean[...].astype(f32)).sum(-1)
        return hr.astype(flat.dtype), base
    dtype = jnp.promote_types(h.dtype, jnp.float32)
    flat = h.reshape(-1, h.shape[-1]).astype(dtype)
    hr = flat if rotation is None else flat @ rotation[...].astype(dtype)
    base = None if mean is None else flat @ mean[...].astype(dtype)
    return hr, base


class RotatedHead:
    """`frame` of a head whose codes live in a rotated, centred frame (`rotation`, `mean`
    attributes: QuantizedEmbedding, VQEmbedding)."""

    def frame(self, h):
        """(h R `[n, d]`, h . mean `[n]` or None): what `attend_chunk` computes first, once
        per batch when given to it (`frame=`): a scan over vocabulary chunks (scoring) would
        otherwise redo the `[n, d] x [d, d]` rotation in every chunk (XLA:CPU does not hoist
        it), ~8% of Gemma 3's head."""
        return head_frame(h, self.rotation, self.mean)


def sum_dtype(hr):
    """The dtype a head sums its products of `hr` (`head_frame`) in and returns its logits
    in: fp32 at least (bf16 operands are summed in fp32)."""
    return jnp.promote_types(hr.dtype, jnp.float32)


def chunk_product(hr, rows):
    """`[n, size]` logits hr `[n, d]` x rows `[size, d]`^T, as a dense table's chunk is
    scored: a head that decoded its chunk's rows once (scoring: `SCORE_TOKENS` tokens or
    more) multiplies them at the matrix units' rate. bf16 hr (compute_dtype "bfloat16",
    `head_frame`): the rows rounded to bf16 as a bf16 table's are, summed in fp32 (`dot_f32`);
    otherwise in hr's dtype."""
    if sum_dtype(hr) != hr.dtype:
        return dot_f32(hr, rows.astype(hr.dtype).T)
    return hr @ rows.astype(hr.dtype).T


def chunk_start(start, size: int, v: int):
    """`start` clamped as `lax.dynamic_slice` clamps it: the chunk ends at V at the latest."""
    if isinstance(start, (int, np.integer)):
        return int(min(max(start, 0), v - size))
    return jnp.clip(start, 0, v - size)


def logits_by_blocks(block, n: int, dtype, start, size: int, rows: int | None = None):
    """`[n, size]`: the logits of table rows start..start+size-1, `rows` of them at a time.

    block(first, count) -> `[n, count]` (count static) decodes rows first..first+count-1 and
    dots them with the hidden states at once: the decoded block (`rows` x d floats, in the
    core's cache) is used while it is there and no `[V, d]` float table is ever written, so a
    decode step reads the codes once. A `lax.fori_loop` over the whole blocks writing into
    one buffer in place, then the remainder (size need not divide by `rows`, default
    HEAD_ROWS)."""
    rows = rows or HEAD_ROWS
    if size <= rows:
        return block(start, size)
    whole, rest = divmod(size, rows)
    out = jnp.zeros((n, size), dtype)

    def body(i, out):
        return jax.lax.dynamic_update_slice_in_dim(out, block(start + i * rows, rows),
                                                   i * rows, axis=1)
    out = jax.lax.fori_loop(0, whole, body, out)
    if rest:
        out = jax.lax.dynamic_update_slice_in_dim(out, block(start + whole * rows, rest),
                                                  whole * rows, axis=1)
    return out


def class_logits(class_block, cls, index, class_rows, n: int, dtype, start, size: int):
    """`[n, size]` logits of rows start..start+size-1 of a table whose rows are stored in
    classes (vq's tiers): row v is row index[v] of class cls[v] (`[V]` each), and each class
    keeps its rows in vocabulary order, so the rows of class c inside any chunk are one
    contiguous run of that class's rows.

    class_block(c, first, count) -> `[n, count]`: logits of class c's rows first..
    first+count-1. Each class's run (at most min(size, class_rows[c]) rows, a static bound)
    goes through `logits_by_blocks`; one gather puts the columns back in vocabulary order."""
    v = cls.shape[0]
    start = chunk_start(start, size, v)
    cls_c = jax.lax.dynamic_slice_in_dim(cls, start, size).astype(jnp.int32)
    idx_c = jax.lax.dynamic_slice_in_dim(index, start, size).astype(jnp.int32)
    at_zero = isinstance(start, int) and start == 0
    before = None if at_zero else jnp.arange(v) < start
    parts, offsets, firsts = [], [], []
    for c, total in enumerate(class_rows):
        m = min(size, total)
        # the class's first row in the chunk, moved back so that a run of m rows fits
        first = (jnp.int32(0) if at_zero or m == 0 else
                 jnp.minimum(jnp.sum(before & (cls == c)), total - m).astype(jnp.int32))
        if m:
            parts.append(logits_by_blocks(lambda f, k, c=c: class_block(c, f, k), n, dtype,
                                          first, m))
        offsets.append(sum(min(size, t) for t in class_rows[:c]))
        firsts.append(first)
    col = jnp.asarray(offsets, jnp.int32)[cls_c] + idx_c - jnp.stack(firsts)[cls_c]
    return jnp.take(jnp.concatenate(parts, axis=1), col, axis=1)


# ----------------------------------------------------------------------------- option checks
# A rule is (test, what is allowed): `check_values` names the option and the rule it broke.
Rule = tuple[Callable[[object], bool], str]


def is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_number(x) -> bool:
    """An int or a finite float (booleans are not numbers here)."""
    return is_int(x) or (isinstance(x, (float, np.floating)) and bool(np.isfinite(x)))


def integer(lo: int = 0, hi: int | None = None) -> Rule:
    top = f" and <= {hi}" if hi is not None else ""
    return (lambda x: is_int(x) and lo <= x and (hi is None or x <= hi),
            f"an integer >= {lo}{top}")


def number(lo: float = 0, hi: float | None = None, *, positive: bool = False) -> Rule:
    """A finite number >= lo (> 0 when positive), <= hi when given."""
    if positive:
        return lambda x: is_number(x) and x > 0, "a number > 0"
    if hi is not None:
        return lambda x: is_number(x) and lo <= x <= hi, f"a number in [{lo}, {hi}]"
    return lambda x: is_number(x) and x >= lo, f"a number >= {lo}"


BOOL: Rule = (lambda x: isinstance(x, (bool, np.bool_)), "true or false")


def choice(*values: str) -> Rule:
    return lambda x: isinstance(x, str) and x in values, f"one of {', '.join(values)}"


def optional(rule: Rule) -> Rule:
    return lambda x: x is None or rule[0](x), f"None or {rule[1]}"


def check_values(method: str, options: dict, rules: dict[str, Rule], *,
                 where: str | None = None) -> None:
    """ConfigError naming the first unknown option, or the first value its rule refuses;
    `where`: the path of a nested option (`method_options.vq.e2e`), named with its fields."""
    stray = sorted(set(options) - set(rules))
    if stray:
        head = (f"{where}: unknown field(s)" if where
                else f"unknown option(s) for method '{method}':")
        raise ConfigError(f"{head} {', '.join(stray)} (known: {', '.join(rules)})")
    for name, value in options.items():
        test, allowed = rules[name]
        if not test(value):
            what = f"{where}.{name}" if where else f"{method} option {name}"
            raise ConfigError(f"{what} must be {allowed}, got {value!r}")
