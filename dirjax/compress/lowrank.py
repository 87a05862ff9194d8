"""The compressed low-rank embedding that SVD and the direction AutoEncoder both produce."""
from __future__ import annotations

import numpy as np

from dirjax.embedding import Described, LowRankEmbedding


class CompressedEmbedding(LowRankEmbedding, Described):
    """A `LowRankEmbedding` (codes `[V, k]` @ weight `[k, d]` + bias `[d]`) that remembers how
    it was made: `method`, `metrics` (see `reconstruction_metrics`) and free `meta`data."""

    def __init__(self, codes, weight, bias=None, *, method: str = "svd",
                 metrics: dict | None = None, meta: dict | None = None):
        super().__init__(codes, weight, bias)
        self.method = method
        self.metrics = metrics
        self.meta = meta

    def export(self) -> tuple[dict, dict]:
        """(arrays, static fields) for `store.save_compressed`."""
        arrays = {n: np.asarray(getattr(self, n)[...]) for n in ("codes", "weight", "bias")}
        return arrays, {"rank": self.rank}

    @classmethod
    def restore(cls, arrays: dict, static: dict, **described) -> "CompressedEmbedding":
        return cls(arrays["codes"], arrays["weight"], arrays["bias"], **described)
