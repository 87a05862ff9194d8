"""Evaluation of a (compressed) model: causal and masked-LM perplexity, zero-shot STS."""
from dirjax.evaluate.perplexity import (
    causal_perplexity,
    mask_lines,
    mlm_perplexity,
    sliding_windows,
    tokenize_stream,
)
from dirjax.evaluate.sts import sentence_embeddings, sts_spearman

__all__ = ["causal_perplexity", "mask_lines", "mlm_perplexity", "sliding_windows",
           "tokenize_stream", "sentence_embeddings", "sts_spearman"]
