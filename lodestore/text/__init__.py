"""lodestore's text layer: texts to ColBERT-style token vectors (the Encoder and its settings).

Not part of the query engine: ``lodestore.engine`` and ``lodestore.store`` never import
it. Importing it is cheap; onnxruntime and tokenizers load only when an Encoder is built.
"""

from .config import EncoderConfig
from .encoder import Encoder

__all__ = ["Encoder", "EncoderConfig"]
