"""lodestore's query engine: candidate generation, prefetching, exact MaxSim re-ranking.

Reads stores only through `store`'s public API. The CPU query path imports
neither torch nor onnxruntime; texts become vectors in ``lodestore.text``, not here.
"""

from ._budget import Placement, parse_size
from ._exhaustive import exhaustive_search
from ._searcher import Searcher

__all__ = ["Placement", "Searcher", "exhaustive_search", "parse_size"]
