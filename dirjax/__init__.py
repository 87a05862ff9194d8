"""dirjax: compress the token-embedding table of pretrained Transformers, measure what is kept."""
# First, before anything below imports JAX: the process setup that every entry shares (the API,
# a notebook, the `dirjax` command, run.py): XLA's fast CPU kernels, the compilation cache,
# quiet libraries, other hosts joined under DIRJAX_DISTRIBUTED=1 (dirjax/runtime.py).
from dirjax import runtime

runtime.setup()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dirjax")
    except PackageNotFoundError:      # the source folder on sys.path, never installed
        return "0+unknown"


__version__ = _version()

from dirjax.embedding import Embedding, LowRankEmbedding, compression_rate, swap_embedding
from dirjax.errors import DirjaxError
from dirjax.models.generate import generate
from dirjax.saved import export_hf, load_model, save_model

__all__ = ["Embedding", "LowRankEmbedding", "compression_rate", "swap_embedding", "DirjaxError",
           "export_hf", "generate", "load_model", "save_model"]
