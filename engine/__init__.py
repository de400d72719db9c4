"""lodestore's query engine: candidate generation, prefetching, exact MaxSim re-ranking.

Reads stores only through `store`'s public API. The CPU query path imports
neither torch nor onnxruntime.
"""

from ._budget import Placement, parse_size
from ._exhaustive import exhaustive_search
from ._searcher import Searcher
from .encoder import Encoder, EncoderConfig  # cheap: onnxruntime/tokenizers load only when an encoder is built

__all__ = ["Encoder", "EncoderConfig", "Placement", "Searcher", "exhaustive_search", "parse_size"]
