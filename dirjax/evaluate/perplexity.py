"""Perplexity of causal LMs (sliding window over a token stream) and of masked LMs (BERT).

Causal: Hugging Face's sliding-window recipe. Windows of `max_length` tokens start every
`stride` tokens; each window scores only the tokens the previous window did not (its last
`end - prev_end`), with everything before them in the window as context, so every token is
scored once. A token with no predecessor in its window cannot be scored: the stream's first
token, and with `stride == max_length` (non-overlapping windows) the first token of every
window, so N tokens in W such windows score N - W. With `bos` (models trained to see one,
Gemma), every window is [BOS] + its tokens: the BOS is context, so the first token of each
window is scored too, and N tokens score N.

Masked: whole-word masking. Each line of at least `min_tokens` WordPiece tokens is tokenised
(with [CLS]/[SEP], truncated to `max_length`); words are a token plus its `##` continuations;
words are drawn in a seeded random order and masked whole until round(p * tokens) tokens are
masked (Hugging Face's DataCollatorForWholeWordMask rule). Every masked token is replaced by
[MASK] (not BERT's 80/10/10 mix, so the score is deterministic and measures recovery of the
hidden word). Metric: exp(mean NLL of the original tokens at the masked positions).

Both return {"ppl": exp(nll), "nll": mean NLL in nats, "tokens": number of tokens scored}.
The model runs under one `jax.jit` per padded shape; batches are padded to a fixed size with
dummy rows whose scores are dropped.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from dirjax.errors import ConfigError, DataError
from dirjax.evaluate.batching import bucket_batches, jit_on_model, pad_rows, run_batches
from dirjax.evaluate.scoring import CHUNK, token_nll


def bos_of(tokenizer) -> int | None:
    """The BOS id when the tokenizer puts one in front of a text (Gemma, Llama 3), else None
    (GPT-2, SmolLM2): the `bos="auto"` setting of the eval job."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if bos is not None and ids and ids[0] == bos else None


def tokenize_stream(tokenizer, text: str, max_tokens: int = 0) -> np.ndarray:
    """Token ids `[N]` int32 of `text` as one stream, no special tokens (no BOS); first
    `max_tokens`."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if max_tokens:
        ids = ids[:max_tokens]
    return np.asarray(ids, dtype=np.int32)


# ---------------------------------------------------------------------------- causal LM

def sliding_windows(n: int, max_length: int, stride: int,
                    bos: bool = False) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a stream of `n` tokens.

    Token `t` is scored (predicted from tokens begin..t-1, after a BOS if `bos`) for
    first <= t < end.
    """
    if max_length < 2 or not 1 <= stride <= max_length:
        raise ConfigError(f"need max_length >= 2 and 1 <= stride <= max_length, "
                          f"got max_length={max_length}, stride={stride}")
    windows, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        # a token needs a predecessor inside its window (the BOS is one)
        windows.append((begin, end, max(prev_end, begin + (0 if bos else 1))))
        prev_end = end
        if end == n:
            break
    return windows


def window_arrays(ids: np.ndarray, max_length: int, stride: int, bos_id: int | None = None):
    """Windows as padded arrays: tokens, attention mask, score weights, each `[W, L]`
    (L = max_length, or max_length + 1 with a BOS in front of every window).

    weights[w, j] = 1 when token j of window w is scored (from the logits at j - 1).
    """
    lead = 0 if bos_id is None else 1
    windows = sliding_windows(len(ids), max_length, stride, bos=bool(lead))
    shape = (len(windows), max_length + lead)
    tokens, mask, weights = (np.zeros(shape, np.int32) for _ in range(3))
    for w, (begin, end, first) in enumerate(windows):
        if lead:
            tokens[w, 0], mask[w, 0] = bos_id, 1
        tokens[w, lead:lead + end - begin] = ids[begin:end]
        mask[w, :lead + end - begin] = 1
        weights[w, lead + first - begin:lead + end - begin] = 1
    return tokens, mask, weights


def _causal_nll(graphdef, state, tokens, mask, weights, chunk=CHUNK):
    """Summed NLL `[B]` of the weighted tokens of each window `tokens [B, T]`, scored from
    the final hidden states vocabulary slice by vocabulary slice (`scoring.token_nll`)."""
    model = nnx.merge(graphdef, state)
    if hasattr(model, "encode") and getattr(model, "out_embedding", None) is not None:
        h = model.encode(tokens, attention_mask=mask)[:, :-1]                # [B, T-1, d]
        nll = token_nll(model, h, tokens[:, 1:], chunk)
    else:   # any other callable LM: ids -> logits [B, T, V]
        logits = model(tokens, attention_mask=mask).astype(jnp.float32)[:, :-1]
        nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
            logits, tokens[:, 1:, None], axis=-1)[..., 0]
    # where, not multiply: a padded position may hold inf/nan and 0 * nan = nan
    return jnp.where(weights[:, 1:] > 0, nll, 0.0).sum(axis=1)


def causal_perplexity(model, ids, *, max_length: int = 512, stride: int | None = None,
                      batch_size: int = 4, progress: bool = True, chunk: int | None = CHUNK,
                      bos_id: int | None = None, compute_dtype: str = "float32") -> dict:
    """Sliding-window perplexity of a causal LM over the token stream `ids [N]`; the vocabulary
    is scored `chunk` rows at a time (None: the full `[B, T, V]` logits); `bos_id`: every
    window starts with this BOS token; `compute_dtype` "bfloat16": bf16 matmul operands
    (`batching.compute_state`), fp32 sums, norms, softmax and loss."""
    ids = np.asarray(ids, np.int32)
    if len(ids) < 2:
        raise DataError(f"need at least 2 tokens to measure perplexity, got {len(ids)}")
    tokens, mask, weights = window_arrays(ids, max_length, stride or max_length, bos_id)
    sums = run_batches(functools.partial(_causal_nll, chunk=chunk), model,
                       (tokens, mask, weights), batch_size, "perplexity", progress, compute_dtype)
    count = int(weights[:, 1:].sum())
    nll = float(sums.sum() / count)
    return {"ppl": math.exp(nll), "nll": nll, "tokens": count}


# ---------------------------------------------------------------------------- masked LM

@dataclass
class MaskedExample:
    """One masked line: `input_ids [T]` with [MASK]s, `labels [T]` original id or -100."""
    input_ids: np.ndarray
    labels: np.ndarray


def word_spans(tokens: list[str], special: list[int]) -> list[list[int]]:
    """Positions of each whole word: a token and its following `##` pieces; specials excluded."""
    words: list[list[int]] = []
    for i, (tok, sp) in enumerate(zip(tokens, special)):
        if sp:
            continue
        if tok.startswith("##") and words and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def choose_masked_words(words: list[list[int]], probability: float,
                        rng: np.random.Generator) -> list[int]:
    """Positions to mask: whole words in random order until round(p * tokens) are covered."""
    n_tokens = sum(len(w) for w in words)
    budget = max(1, round(n_tokens * probability))
    chosen: list[int] = []
    for w in rng.permutation(len(words)):
        if len(chosen) >= budget:
            break
        if len(chosen) + len(words[w]) > budget:
            continue
        chosen.extend(words[w])
    return sorted(chosen)


def mask_lines(tokenizer, lines: list[str], *, probability: float = 0.15, min_tokens: int = 20,
               max_length: int = 512, seed: int = 0) -> list[MaskedExample]:
    """Whole-word-masked examples from the lines with at least `min_tokens` word pieces.

    Line i draws from np.random.default_rng([seed, i]): the same seed gives the same masks,
    and one line's masks do not depend on which other lines are kept.
    """
    if tokenizer.mask_token_id is None:
        raise ConfigError("the tokenizer has no [MASK] token: not a masked-LM tokenizer")
    enc = tokenizer(lines, add_special_tokens=True, truncation=True, max_length=max_length,
                    return_special_tokens_mask=True)
    examples = []
    for i, (ids, special) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"])):
        if len(ids) - sum(special) < min_tokens:
            continue
        words = word_spans(tokenizer.convert_ids_to_tokens(ids), special)
        positions = choose_masked_words(words, probability, np.random.default_rng([seed, i]))
        ids = np.asarray(ids, np.int32)
        labels = np.full_like(ids, -100)
        labels[positions] = ids[positions]
        masked = ids.copy()
        masked[positions] = tokenizer.mask_token_id
        examples.append(MaskedExample(masked, labels))
    return examples


def _masked_nll(graphdef, state, tokens, mask, labels):
    """Summed NLL `[B]` of the original tokens at the masked positions (labels >= 0)."""
    model = nnx.merge(graphdef, state)
    if hasattr(model, "mlm_logits"):     # fp32 logits, whatever the compute dtype
        logits = model.mlm_logits(model.encode(tokens, attention_mask=mask))  # [B, T, V]
    else:   # any other callable masked LM: ids -> logits [B, T, V]
        logits = model(tokens, attention_mask=mask).astype(jnp.float32)
    target = jnp.maximum(labels, 0)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, target[..., None], axis=-1)[..., 0]
    return jnp.where(labels >= 0, nll, 0.0).sum(axis=1)


def mlm_perplexity(model, examples: list[MaskedExample], *, batch_size: int = 8,
                   progress: bool = True, compute_dtype: str = "float32") -> dict:
    """exp(mean NLL over all masked tokens) of a masked LM on whole-word-masked examples
    (`compute_dtype` as in `causal_perplexity`)."""
    if not examples:
        raise DataError("no line is long enough for masked-LM evaluation")
    step, state = jit_on_model(_masked_nll, model, compute_dtype)
    total, count = 0.0, 0
    batches = list(bucket_batches([len(e.input_ids) for e in examples], batch_size))
    for idx, length in tqdm(batches, desc="mlm perplexity", leave=False, disable=not progress):
        rows = [examples[i] for i in idx] + [examples[idx[0]]] * (batch_size - len(idx))
        tokens = pad_rows([e.input_ids for e in rows], length, 0)
        mask = pad_rows([np.ones_like(e.input_ids) for e in rows], length, 0)
        labels = pad_rows([e.labels for e in rows], length, -100)
        sums = np.asarray(step(state, tokens, mask, labels), np.float64)
        total += float(sums[:len(idx)].sum())
        count += int(sum((examples[i].labels >= 0).sum() for i in idx))
    nll = total / count
    return {"ppl": math.exp(nll), "nll": nll, "tokens": count}
