"""Command-line arguments more than one `lodestore` command takes: codec, filter and search-mode options."""

from __future__ import annotations

import argparse
import json

import numpy as np

from lodestore.hybrid import DEFAULT_FUSION, FUSIONS, MODES
from lodestore.store.codecs.pq import PQ_SUBSPACES_ALLOWED


def params(args: argparse.Namespace) -> list | None:
    """--param values: a JSON number, true/false or "quoted string" is that value; anything else the text itself."""
    if args.where is None:
        if args.param:
            raise ValueError("--param given without --where")
        return None
    out = []
    for text in args.param:
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out.append(value if isinstance(value, (int, float, str, bool)) else text)
    return out


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--where", default=None,
                   help="only documents whose metadata match, e.g. \"year >= ? AND lang = ?\" (README: metadata filters)")
    p.add_argument("--param", action="append", default=[], metavar="VALUE",
                   help="the value of the next '?' (repeat in order): 2019, 1.5, true, \"2019\" (a string), or other text")


def add_codec_arguments(p: argparse.ArgumentParser) -> None:
    """--codec / --nbits / --pq-subspaces, as Store.create takes them (store/_codecs.py resolves them)."""
    p.add_argument("--codec", choices=("scalar", "pq"), default=None,
                   help="residual codec (default: scalar if --nbits is given, pq if --pq-subspaces is, else the library default)")
    p.add_argument("--nbits", type=int, default=None, choices=(1, 2, 4), help="scalar codec: bits per dimension (default 2)")
    p.add_argument("--pq-subspaces", type=int, default=None, choices=PQ_SUBSPACES_ALLOWED,
                   help="pq codec: bytes per token residual (default: the most that fit in dim/4 bytes)")


def add_mode_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """--mode / --fusion, as Index.search takes them (lodestore/hybrid.py)."""
    p.add_argument("--mode", choices=MODES, default=default,
                   help=f"maxsim (token vectors), bm25 (keywords) or hybrid (both fused; default {default})")
    p.add_argument("--fusion", choices=FUSIONS, default=DEFAULT_FUSION,
                   help=f"hybrid: rrf (reciprocal rank) or score (normalized scores); default {DEFAULT_FUSION}")


def load_queries(path: str) -> np.ndarray:
    """--queries FILE: a .npy of one query (q_len, dim) or a batch (B, q_len, dim), as a batch."""
    queries = np.load(path)
    return queries[None] if queries.ndim == 2 else queries
