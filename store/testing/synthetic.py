"""Seeded synthetic token embeddings that look like ColBERT's (pure numpy, no torch).

Tests, the demo and the benchmarks all draw their corpora from here, so the
store sees data with the structure that matters to it: many anisotropic
clusters on the unit sphere, documents that stay on a few related topics, and
skewed lengths.

The model, for a corpus of T tokens in `dim` dimensions:

* Clusters. About 2*sqrt(T) of them (at least 16). Clusters are grouped in
  families of about 8 ("related" topics): a cluster centre is a random unit
  vector pulled towards its family's direction, so centres in a family have a
  cosine of about 0.35 and unrelated centres about 0.
* Tokens. centre + noise, then L2-normalized. The noise is anisotropic: its
  covariance is Q diag(s^2) Q^T with Q one of a few random rotations and s a
  power-law spectrum (variance ~ 1/rank, permuted per cluster), so a few
  directions carry most of the spread. Its total variance is drawn per cluster
  so a token's cosine to its own centre is typically 0.7-0.9.
* Documents. A length from a clipped lognormal around `mean_len`; 2-6 topic
  clusters from one family with Dirichlet mixture weights; each token comes from
  a topic cluster, except a small fraction (10 %) from any cluster, drawn with
  Zipf popularity (the stop-word and punctuation clusters every document has).

Determinism: documents are generated in fixed blocks of `BLOCK_DOCS`, each with
its own random stream derived from the seed, so the output depends only on the
parameters and the seed, never on how it was chunked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BLOCK_DOCS",
    "cluster_centres",
    "corpus_doclens",
    "default_n_clusters",
    "iter_corpus_chunks",
    "make_corpus",
    "make_queries",
]

# Documents per independent random stream: the unit of determinism. Chunks are
# whole multiples of it.
BLOCK_DOCS = 256
DEFAULT_CHUNK_DOCS = 1024

_FAMILY_SIZE = 8  # clusters per family of related topics
_FAMILY_COS = 0.35  # typical cosine between centres of one family
_MIN_TOPICS, _MAX_TOPICS = 2, 6  # topic clusters per document
_TOPIC_ALPHA = 1.0  # Dirichlet concentration of a document's topic mixture
_OFF_TOPIC_FRAC = 0.1  # share of tokens from any cluster, by Zipf popularity
_ZIPF_EXPONENT = 1.0
_N_BASES = 8  # random rotations the per-cluster noise spectra live in
_SPECTRUM_DECAY = 1.0  # noise variance along the i-th axis ~ 1 / i^decay
_NOISE_VAR_RANGE = (0.25, 0.9)  # total noise variance per cluster: own-centre cosine ~0.72-0.9
_TOKEN_SCALE_SIGMA = 0.15  # lognormal spread of the noise scale per token
_LEN_SIGMA = 0.5  # lognormal sigma of document lengths

# Stream ids mixed into the seed, so each kind of draw has its own stream.
_STREAM_BANK, _STREAM_LENGTHS, _STREAM_TOKENS, _STREAM_QUERIES = 1, 2, 3, 4


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator for (seed, stream...)."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng([int(seed), *map(int, stream)])


def _normalize(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to unit L2 norm, in place."""
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


def default_n_clusters(total_tokens: int) -> int:
    """Clusters for a corpus of `total_tokens`: round(2*sqrt(T)), at least 16."""
    return max(16, round(2 * math.sqrt(max(total_tokens, 0))))


# --------------------------------------------------------------------------- clusters


@dataclass(frozen=True)
class _ClusterBank:
    """Everything that defines the clusters of one corpus."""

    centres: np.ndarray  # (C, dim) float32, unit rows
    sigma: np.ndarray  # (C, dim) float32: noise std along each axis of the cluster's basis
    basis: np.ndarray  # (C,) int: which rotation of `rotations` the cluster uses
    rotations: np.ndarray  # (_N_BASES, dim, dim) float32, orthogonal
    members: np.ndarray  # (F, m_max) int64: clusters of each family, -1 padded
    popularity: np.ndarray  # (C,) float64: Zipf probabilities for off-topic tokens

    @property
    def n_clusters(self) -> int:
        return self.centres.shape[0]


def _random_rotations(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """n random orthogonal (dim, dim) matrices (QR of gaussians, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, dim, dim)))
    return (q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]).astype(np.float32)


def _family_members(n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster c belongs to family c % F; returns (family per cluster, members matrix)."""
    n_families = max(1, n_clusters // _FAMILY_SIZE)
    family = np.arange(n_clusters) % n_families
    width = -(-n_clusters // n_families)
    members = np.full((n_families, width), -1, dtype=np.int64)
    members[family, np.arange(n_clusters) // n_families] = np.arange(n_clusters)
    return family, members


def _noise_spectra(rng: np.random.Generator, n_clusters: int, dim: int) -> np.ndarray:
    """(C, dim) per-axis noise std: power-law spectrum, random axis order, random total variance."""
    spectrum = 1.0 / np.arange(1, dim + 1) ** _SPECTRUM_DECAY
    spectrum /= spectrum.sum()
    order = np.argsort(rng.random((n_clusters, dim)), axis=1)
    total_var = rng.uniform(*_NOISE_VAR_RANGE, size=(n_clusters, 1))
    return np.sqrt(spectrum[order] * total_var).astype(np.float32)


def _make_bank(n_clusters: int, dim: int, seed: int) -> _ClusterBank:
    """The clusters for (n_clusters, dim, seed): same inputs, same clusters."""
    if n_clusters < 1 or dim < 2:
        raise ValueError(f"need n_clusters >= 1 and dim >= 2, got {n_clusters}, {dim}")
    rng = _rng(seed, _STREAM_BANK, n_clusters, dim)
    family, members = _family_members(n_clusters)
    family_dirs = _normalize(rng.standard_normal((members.shape[0], dim)))
    own = _normalize(rng.standard_normal((n_clusters, dim)))
    centres = _normalize(math.sqrt(_FAMILY_COS) * family_dirs[family] + math.sqrt(1 - _FAMILY_COS) * own)
    zipf = 1.0 / np.arange(1, n_clusters + 1) ** _ZIPF_EXPONENT
    return _ClusterBank(
        centres=centres.astype(np.float32),
        sigma=_noise_spectra(rng, n_clusters, dim),
        basis=rng.integers(_N_BASES, size=n_clusters),
        rotations=_random_rotations(rng, _N_BASES, dim),
        members=members,
        popularity=zipf[rng.permutation(n_clusters)] / zipf.sum(),
    )


def cluster_centres(n_clusters: int, dim: int = 128, *, seed: int = 0) -> np.ndarray:
    """The true (n_clusters, dim) float32 unit cluster centres a corpus with this seed uses.

    For tests of clustering quality: pass the same `n_clusters` given to (or
    defaulted by, see `default_n_clusters`) `make_corpus`.
    """
    return _make_bank(n_clusters, dim, seed).centres.copy()


# --------------------------------------------------------------------------- lengths


@dataclass(frozen=True)
class _LengthSpec:
    mean_len: int
    min_len: int
    max_len: int

    def check(self) -> None:
        if not 1 <= self.min_len <= self.mean_len <= self.max_len:
            raise ValueError(
                f"need 1 <= min_len <= mean_len <= max_len, got {self.min_len}, {self.mean_len}, {self.max_len}"
            )

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n lengths from a lognormal with mean `mean_len`, rounded and clipped."""
        mu = math.log(self.mean_len) - _LEN_SIGMA**2 / 2
        raw = np.rint(rng.lognormal(mu, _LEN_SIGMA, size=n))
        return np.clip(raw, self.min_len, self.max_len).astype(np.int64)


def _block_lengths(lengths: _LengthSpec, seed: int, block: int, n: int = BLOCK_DOCS) -> np.ndarray:
    """Lengths of the first n documents of block `block`."""
    return lengths.draw(_rng(seed, _STREAM_LENGTHS, block), n)


def _plan_doclens(lengths: _LengthSpec, seed: int, n_docs: int | None, n_tokens: int | None) -> np.ndarray:
    """All document lengths: n_docs of them, or as many as it takes to reach n_tokens."""
    lengths.check()
    if (n_docs is None) == (n_tokens is None):
        raise ValueError("give exactly one of n_docs and n_tokens")
    if n_docs is not None:
        if n_docs < 1:
            raise ValueError(f"n_docs must be positive, got {n_docs}")
        n_blocks = -(-n_docs // BLOCK_DOCS)
        parts = [_block_lengths(lengths, seed, b) for b in range(n_blocks)]
        return np.concatenate(parts)[:n_docs]
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    parts, total = [], 0
    while total < n_tokens:
        parts.append(_block_lengths(lengths, seed, len(parts)))
        total += int(parts[-1].sum())
    doclens = np.concatenate(parts)
    n_docs = int(np.searchsorted(np.cumsum(doclens), n_tokens)) + 1  # first doc reaching the target
    return doclens[:n_docs]


def corpus_doclens(
    n_docs: int | None = None,
    *,
    n_tokens: int | None = None,
    mean_len: int = 80,
    min_len: int = 30,
    max_len: int = 300,
    seed: int = 0,
) -> np.ndarray:
    """The int64 document lengths of the corpus `iter_corpus_chunks` would produce (cheap).

    Give n_docs, or n_tokens to take documents until their total reaches it.
    Lets a writer size its output before generating a single vector.
    """
    return _plan_doclens(_LengthSpec(mean_len, min_len, max_len), seed, n_docs, n_tokens)


# --------------------------------------------------------------------------- tokens


def _doc_topics(rng: np.random.Generator, bank: _ClusterBank, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per document: (topics (n, 6) cluster ids from one family, weights (n, 6) summing to 1)."""
    family = rng.integers(bank.members.shape[0], size=n_docs)
    members = bank.members[family]
    keys = np.where(members >= 0, rng.random(members.shape), np.inf)
    slots = min(_MAX_TOPICS, members.shape[1])
    topics = np.take_along_axis(members, np.argsort(keys, axis=1)[:, :slots], axis=1)
    n_topics = rng.integers(_MIN_TOPICS, _MAX_TOPICS + 1, size=(n_docs, 1))
    valid = (np.arange(slots) < n_topics) & (topics >= 0)
    weights = rng.gamma(_TOPIC_ALPHA, size=topics.shape) * valid
    weights /= weights.sum(axis=1, keepdims=True)
    return np.where(valid, topics, 0), weights


def _token_clusters(rng: np.random.Generator, bank: _ClusterBank, doclens: np.ndarray) -> np.ndarray:
    """The cluster of every token of the documents, in document order."""
    topics, weights = _doc_topics(rng, bank, len(doclens))
    doc = np.repeat(np.arange(len(doclens)), doclens)
    cum = np.cumsum(weights, axis=1)[doc]
    last = np.count_nonzero(weights, axis=1)[doc] - 1  # guards against cum ending a hair below 1
    slot = np.minimum((rng.random((len(doc), 1)) >= cum).sum(axis=1), last)
    clusters = topics[doc, slot]
    off = rng.random(len(doc)) < _OFF_TOPIC_FRAC
    clusters[off] = rng.choice(bank.n_clusters, size=int(off.sum()), p=bank.popularity)
    return clusters


def _cluster_noise(rng: np.random.Generator, bank: _ClusterBank, clusters: np.ndarray) -> np.ndarray:
    """(T, dim) anisotropic gaussian noise, row i with the covariance of clusters[i]."""
    noise = rng.standard_normal((len(clusters), bank.centres.shape[1]), dtype=np.float32)
    noise *= bank.sigma[clusters]
    noise *= rng.lognormal(0.0, _TOKEN_SCALE_SIGMA, size=(len(clusters), 1)).astype(np.float32)
    basis = bank.basis[clusters]
    for b in range(_N_BASES):
        rows = np.flatnonzero(basis == b)
        noise[rows] = noise[rows] @ bank.rotations[b].T
    return noise


def _block_tokens(bank: _ClusterBank, doclens: np.ndarray, seed: int, block: int) -> np.ndarray:
    """(sum(doclens), dim) float32 unit token vectors of one block of documents."""
    rng = _rng(seed, _STREAM_TOKENS, block)
    clusters = _token_clusters(rng, bank, doclens)
    tokens = _cluster_noise(rng, bank, clusters)
    tokens += bank.centres[clusters]
    return _normalize(tokens)


def iter_corpus_chunks(
    n_docs: int | None = None,
    dim: int = 128,
    *,
    n_tokens: int | None = None,
    n_clusters: int | None = None,
    mean_len: int = 80,
    min_len: int = 30,
    max_len: int = 300,
    seed: int = 0,
    chunk_docs: int = DEFAULT_CHUNK_DOCS,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (docs float32 (tokens, dim) unit rows, doclens int64) chunk by chunk.

    Give n_docs, or n_tokens to take documents until their total reaches it.
    Chunks hold `chunk_docs` documents (rounded up to a multiple of BLOCK_DOCS),
    so memory stays at a few chunks' worth however big the corpus is; the
    concatenated output is identical for every chunk_docs. `n_clusters`
    defaults to `default_n_clusters(total tokens)`.
    """
    doclens = corpus_doclens(n_docs, n_tokens=n_tokens, mean_len=mean_len, min_len=min_len, max_len=max_len, seed=seed)
    bank = _make_bank(default_n_clusters(int(doclens.sum())) if n_clusters is None else n_clusters, dim, seed)
    step = max(1, -(-chunk_docs // BLOCK_DOCS)) * BLOCK_DOCS
    for start in range(0, len(doclens), step):
        chunk_lens = doclens[start : start + step]
        out = np.empty((int(chunk_lens.sum()), dim), dtype=np.float32)
        row = 0
        for first in range(0, len(chunk_lens), BLOCK_DOCS):
            block_lens = chunk_lens[first : first + BLOCK_DOCS]
            n = int(block_lens.sum())
            out[row : row + n] = _block_tokens(bank, block_lens, seed, (start + first) // BLOCK_DOCS)
            row += n
        yield out, chunk_lens.copy()


def make_corpus(
    n_docs: int,
    dim: int = 128,
    *,
    n_clusters: int | None = None,
    mean_len: int = 80,
    min_len: int = 30,
    max_len: int = 300,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole corpus in memory: (docs float32 (total_tokens, dim) unit rows in document order, doclens int64).

    Same output as concatenating `iter_corpus_chunks(n_docs, ...)`; filled in
    place, so peak memory is the corpus plus one chunk.
    """
    lengths = dict(mean_len=mean_len, min_len=min_len, max_len=max_len, seed=seed)
    doclens = corpus_doclens(n_docs, **lengths)
    docs = np.empty((int(doclens.sum()), dim), dtype=np.float32)
    row = 0
    for chunk, _ in iter_corpus_chunks(n_docs, dim, n_clusters=n_clusters, **lengths):
        docs[row : row + len(chunk)] = chunk
        row += len(chunk)
    return docs, doclens


# --------------------------------------------------------------------------- queries


def make_queries(
    docs: np.ndarray,
    doclens: np.ndarray,
    n_queries: int,
    q_len: int = 32,
    *,
    noise: float = 1.0,
    noise_spread: float = 1.0,
    n_noise_tokens: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Queries aimed at known documents: (queries float32 (n_queries, q_len, dim) unit, target doc int64).

    A query takes a uniformly random target document, samples q_len -
    n_noise_tokens of its tokens with replacement, adds gaussian noise of norm
    about `noise` times a per-query factor exp(N(0, noise_spread^2)),
    renormalizes, and ends with n_noise_tokens random unit vectors. A token with
    noise 1.0 keeps a cosine of ~0.7 to its source; the spread makes a tail of
    queries much harder. Exact tokens give the target a large edge, so only
    that tail misses: with the defaults the target is the exact-MaxSim top-1
    for ~94 % of queries on a 1e5-token corpus (fewer on bigger ones).
    `docs` may be a memory map (any float dtype): only the sampled rows are read.
    """
    doclens = np.asarray(doclens, dtype=np.int64)
    if not 0 <= n_noise_tokens < q_len:
        raise ValueError(f"need 0 <= n_noise_tokens < q_len, got {n_noise_tokens}, {q_len}")
    if docs.shape[0] != doclens.sum():
        raise ValueError(f"docs has {docs.shape[0]} rows but doclens sums to {doclens.sum()}")
    rng = _rng(seed, _STREAM_QUERIES)
    dim, n_real = docs.shape[1], q_len - n_noise_tokens
    targets = rng.integers(len(doclens), size=n_queries)
    offsets = np.concatenate([[0], np.cumsum(doclens)])
    picks = offsets[targets, None] + (rng.random((n_queries, n_real)) * doclens[targets, None]).astype(np.int64)
    rows, inverse = np.unique(picks, return_inverse=True)  # sorted reads: kind to a memory map
    queries = np.empty((n_queries, q_len, dim), dtype=np.float32)
    queries[:, :n_real] = np.asarray(docs[rows], dtype=np.float32)[inverse.reshape(picks.shape)]
    scale = noise * rng.lognormal(0.0, noise_spread, size=(n_queries, 1, 1)) / math.sqrt(dim)
    queries[:, :n_real] += (rng.standard_normal((n_queries, n_real, dim)) * scale).astype(np.float32)
    queries[:, n_real:] = rng.standard_normal((n_queries, n_noise_tokens, dim))
    return _normalize(queries), targets.astype(np.int64)
