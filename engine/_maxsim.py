"""Exact MaxSim over documents whose token rows are concatenated.

score(q, d) = sum over query tokens i of max over document tokens j of <q_i, d_j>.
Vectorized over every candidate at once: one matmul, one segmented max. The
segmented maxima run in the C kernels of engine/_native.py where they were built
(same results, GIL released), else in numpy.
"""

from __future__ import annotations

import numpy as np

from . import _native as native

CI_CHUNK_TOKENS = 8192  # tokens per centroid-interaction slice (bounds the query's working set)
# the C kernel gathers nothing, so its slices are this many times larger: fewer calls and thread hand-offs,
# and a large candidate set still has enough slices to share over the threads
CI_NATIVE_FACTOR = 8


def maxsim_concat(query: np.ndarray, tokens: np.ndarray, doclens: np.ndarray, *,
                  fixed_order: bool = False) -> np.ndarray:
    """Scores of each document: query (q, d), tokens (sum(doclens), d), doclens (n,) all > 0.

    fixed_order: every dot product summed in one order whatever the token's row or the
    matrix's size (numpy's einsum loop; BLAS's order depends on where a row falls in its
    tiles), so a document's score is the same bits in any block, store or shard; slower.
    """
    if len(doclens) == 0:
        return np.zeros(0, dtype=np.float32)
    sim = np.einsum("td,qd->tq", tokens, query, optimize=False) if fixed_order else tokens @ query.T  # (T, q)
    if native.segment_max_sum is not None and sim.dtype == np.float32:
        return native.segment_max_sum(sim, doclens)  # the same sums, GIL released
    return _segment_max_sum(np.ascontiguousarray(sim.T), doclens)  # (q, T): the segmented max runs along rows


def centroid_interaction(table: np.ndarray, doc_codes: np.ndarray, starts: np.ndarray, lens: np.ndarray,
                         workers=None) -> np.ndarray:
    """PLAID's centroid interaction: MaxSim with each token replaced by its centroid.

    table is (K, q): row c holds centroid c's score against every query token
    (float, or the Searcher's int16 fixed point; the result is in the same units).
    Document i's centroid ids are doc_codes[starts[i] : starts[i] + lens[i]].
    Computed in slices of whole documents of ~CI_CHUNK_TOKENS ids: each slice
    gathers its ids, then their table rows (one contiguous row per id), then a
    segmented max over each document's rows, so the working set stays ~1 MB
    whatever the number of candidates (the C kernel gathers nothing: its slices
    are CI_NATIVE_FACTOR times larger). Slices are spread over `workers`
    (engine._parallel.Workers) when given; they do not depend on the number of
    threads, so neither do the scores.
    """
    if len(lens) == 0:
        return np.zeros(0, dtype=np.float32)
    fast = native.centroid_interaction is not None and table.dtype == np.int16 and table.flags.c_contiguous \
        and doc_codes.dtype == np.uint16 and doc_codes.flags.c_contiguous
    chunk = CI_CHUNK_TOKENS * CI_NATIVE_FACTOR if fast else CI_CHUNK_TOKENS
    ends = np.cumsum(lens)
    cuts = [0]  # document index where each slice starts
    while cuts[-1] < len(lens):
        a = cuts[-1]
        start = ends[a - 1] if a else 0
        cuts.append(max(a + 1, int(np.searchsorted(ends, start + chunk, side="right"))))
    out = np.empty(len(lens), dtype=np.float32)

    def one(i: int) -> None:
        a, b = cuts[i], cuts[i + 1]
        if fast:  # the C kernel: the same sums, no gathered copies, GIL released
            out[a:b] = native.centroid_interaction(table, doc_codes, starts[a:b], lens[a:b])
            return
        ids = np.take(doc_codes, np.repeat(starts[a:b], lens[a:b]) + ramp(lens[a:b]))
        first = np.zeros(b - a, dtype=np.int64)
        np.cumsum(lens[a : b - 1], out=first[1:])
        rows = np.take(table, ids, axis=0)  # (ids, q)
        out[a:b] = np.maximum.reduceat(rows, first, axis=0).sum(axis=1, dtype=np.float32)

    if workers is None:
        for i in range(len(cuts) - 1):
            one(i)
    else:
        workers.map(one, len(cuts) - 1)
    return out


CACHE_LINE = 64


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty whose data starts on a 64-byte boundary. The kernels gather 32-lane int16 rows
    (64 bytes) from the score table and the lookup tables; numpy's large allocations typically
    start 16 bytes past a boundary (glibc), so every such row straddled two cache lines
    (slower: docs/BENCHMARKS.md 3.4)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(n + CACHE_LINE, dtype=np.uint8)
    skip = -buf.ctypes.data % CACHE_LINE
    return buf[skip : skip + n].view(dtype).reshape(shape)


def int8_centroids(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centroids as int8 for the query-centroid product: (rows (K, d4) int8, their byte sums (K,) int32,
    scales (K,) float64), each row scaled so its largest |value| is 127 (d4: d rounded up to 4, zero-padded)."""
    k, d = centroids.shape
    scale = np.empty(k, dtype=np.float64)
    rows = np.zeros((k, -(-d // 4) * 4), dtype=np.int8)
    for a in range(0, k, 4096):  # in blocks: float temporaries of the whole table would double a Searcher's peak
        part = centroids[a : a + 4096]
        s = np.maximum(part, -part).max(axis=1).astype(np.float64) / 127.0
        s[s == 0] = 1.0
        scale[a : a + 4096] = s
        rows[a : a + 4096, :d] = np.clip(np.rint(part / s[:, None]), -127, 127)
    return rows, rows.sum(axis=1, dtype=np.int32), scale


def int8_query(scaled: np.ndarray, d4: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query tokens (q, d) (already x SCORE_SCALE) as int8 rows scaled to 127 at their largest |value|:
    (rows (q, d4) int8, scales (qp,) float64, the kernel's layout (d4/4, qp, 4) uint8 = rows + 128),
    qp = q rounded up to 16 (padding: zeros, scale 0)."""
    q, d = scaled.shape
    qp = -(-q // 16) * 16
    scale = np.zeros(qp, dtype=np.float64)
    scale[:q] = np.abs(scaled).max(axis=1).astype(np.float64) / 127.0
    safe = np.where(scale[:q] == 0, 1.0, scale[:q])
    rows = np.zeros((qp, d4), dtype=np.int8)
    rows[:q, :d] = np.clip(np.rint(scaled / safe[:, None]), -127, 127)
    layout = np.ascontiguousarray((rows.astype(np.int16) + 128).astype(np.uint8).reshape(qp, d4 // 4, 4).transpose(1, 0, 2))
    return rows[:q], scale, layout


def score_table_i8(cent: tuple[np.ndarray, np.ndarray, np.ndarray], query: tuple[np.ndarray, np.ndarray, np.ndarray],
                   out: np.ndarray) -> None:
    """out (k, q) int16 = trunc((<cent row, query row> x cent scale) x query scale), from int8_centroids
    (or a block of its rows) and int8_query. The int8 products are exact, so the C kernel (on AVX-512 VNNI
    only: faster than BLAS there, slower without it) and this float32 BLAS product (exact for d <= 1040:
    |sums| < 2^24) agree bit for bit."""
    rows, csum, cscale = cent
    qrows, qscale, layout = query
    q = len(qrows)
    if native.score_table_i8 is not None and native.VNNI:
        native.score_table_i8(rows, csum, cscale, layout, qscale, q, out)
        return
    dt = np.float32 if rows.shape[1] <= 1040 else np.float64
    prod = rows.astype(dt) @ qrows.astype(dt).T
    out[...] = np.trunc((prod.astype(np.float64) * cscale[:, None]) * qscale[None, :q])


def residual_lut(query: np.ndarray, byte_tables: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-query lookup tables for residual interaction: ((m, 256, q) int16, scale).

    byte_tables (m, 256, w) is the codec's residual as per-byte lookups (byte j adds
    byte_tables[j, v] to dimensions [j*w, (j+1)*w)); entry (j, v, i) of the result is
    <q_i's slice j, byte_tables[j, v]> x scale, rounded. The scale is the largest (at most
    2^14) for which no sum over a token's m bytes can leave int16, whatever the bytes.
    """
    m, _, w = byte_tables.shape
    q = len(query)
    qs = np.ascontiguousarray(query.reshape(q, m, w).transpose(1, 2, 0))  # (m, w, q)
    lut = np.matmul(byte_tables, qs)  # (m, 256, q) float32; scaled and rounded in place (a query's hot path)
    bound = float(np.maximum(lut.max(axis=(1, 2)), -lut.min(axis=(1, 2))).sum())
    scale = float(1 << 14) if bound <= 0 else min(float(1 << 14), (32767 - m) / bound)
    lut *= np.float32(scale)
    out = aligned_empty(lut.shape, np.int16)
    np.rint(lut, out=out, casting="unsafe")
    return out, scale


def residual_interaction(query: np.ndarray, table: np.ndarray, table_scale: float, lut: tuple[np.ndarray, float],
                         codec, codes: np.ndarray, rows: np.ndarray, doclens: np.ndarray) -> np.ndarray:
    """MaxSim with each token's residual scored from lookup tables instead of decoded: a cheap, close
    estimate of exact MaxSim (it skips the re-normalization of decoded tokens) that picks which
    candidates exact re-ranking scores. table: the (K, q) int16 query-centroid scores (x table_scale);
    lut: residual_lut's output. Without the C kernels: MaxSim over tokens decoded un-normalized."""
    if len(doclens) == 0:
        return np.zeros(0, dtype=np.float32)
    if native.residual_maxsim is not None and table.dtype == np.int16 and codes.dtype == np.uint16:
        return native.residual_maxsim(table, table_scale, lut[0], lut[1], codes, rows, doclens)
    return maxsim_concat(query, codec.decode(codes, rows, normalize=False), doclens)


def ramp(lengths: np.ndarray) -> np.ndarray:
    """0..l-1 for each l in lengths, concatenated: the offsets inside each run."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)


def _segment_max_sum(sim: np.ndarray, doclens: np.ndarray) -> np.ndarray:
    """sim (q, T) with documents as consecutive column runs -> per document sum_i max_j.

    reduceat along the last axis of a C-contiguous array: faster than along axis 0 (docs/BENCHMARKS.md 4).
    """
    starts = np.zeros(len(doclens), dtype=np.int64)
    np.cumsum(doclens[:-1], out=starts[1:])
    return np.maximum.reduceat(sim, starts, axis=1).sum(axis=0, dtype=np.float32)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first; ties broken by lower index (deterministic)."""
    n = len(scores)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        kth = np.partition(scores, n - k)[n - k]
        part = np.nonzero(scores >= kth)[0]  # every index tied at the cut, so lexsort can choose
    else:
        part = np.arange(n)
    order = np.lexsort((part, -scores[part]))
    return part[order[:k]]


def top_k_set(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices top_k(scores, k) gives, ascending: the same k (the k-th best's ties to the lower indices),
    without ordering them by score. scores must hold no NaN."""
    n = len(scores)
    k = min(k, n)
    if k == n:
        return np.arange(n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)  # fewer than k: kth is the k-th largest
    ties = np.flatnonzero(scores == kth)[: k - len(above)]
    return np.sort(np.concatenate([above, ties]))


def maxsim_torch(query, tokens, doclens, device: str):
    """The same MaxSim in torch (used for the GPU path); returns a numpy float32 array."""
    import torch

    q = torch.as_tensor(query, device=device)
    t = torch.as_tensor(tokens, device=device)
    sim = t @ q.T  # (T, q)
    lens = torch.as_tensor(np.asarray(doclens, dtype=np.int64), device=device)
    doc = torch.repeat_interleave(torch.arange(len(doclens), device=device), lens)
    out = torch.full((len(doclens), q.shape[0]), -torch.inf, device=device, dtype=sim.dtype)
    out.scatter_reduce_(0, doc[:, None].expand_as(sim), sim, reduce="amax", include_self=True)
    return out.sum(dim=1).float().cpu().numpy()
