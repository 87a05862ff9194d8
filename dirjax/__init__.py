"""dirjax: compress the token-embedding table of pretrained Transformers and measure what is kept."""
from dirjax.embedding import Embedding, LowRankEmbedding, compression_rate, swap_embedding
from dirjax.errors import DirjaxError
from dirjax.models import load_model
from dirjax.saved import export_hf, save_model

__all__ = ["Embedding", "LowRankEmbedding", "compression_rate", "swap_embedding", "DirjaxError",
           "export_hf", "load_model", "save_model"]
