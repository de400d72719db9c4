"""Per-stage wall time of lodestore searches (wrappers around the Searcher's stages)."""
import sys, time, collections
import numpy as np
import lodestore
from engine import _searcher as S, _maxsim as M
store, bundle, n, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
acc = collections.defaultdict(float)
def wrap(obj, name, label):
    f = getattr(obj, name)
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); acc[label] += time.perf_counter() - t; return r
    setattr(obj, name, g)
wrap(S.Searcher, "_candidates", "2-3 probe + centroid interaction")
wrap(S, "_top_columns", "2a top-nprobe centroids")
wrap(S, "centroid_scores_concat", "3a centroid interaction scoring")
wrap(S.Searcher, "_rerank", "4 exact rerank (read+decode+maxsim)")
wrap(S, "maxsim_concat", "4c maxsim matmul+segmax")
import engine._corpus as C
wrap(C.Corpus, "read_rows", "4a read residual rows")
wrap(C.Corpus, "distinct_codes", "3b distinct codes lookup")
from store import _codec
wrap(_codec.ResidualCodec, "decode", "4b decode")
s = lodestore.Searcher(store, memory_budget=budget)
qs = np.load(bundle + "/queries.npy")[:n]
for q in qs[:5]: s.search(q, k=10)
acc.clear()
t = time.perf_counter(); lat = []
for q in qs:
    t1 = time.perf_counter(); s.search(q, k=10); lat.append(time.perf_counter() - t1)
tot = time.perf_counter() - t
print(f"{store} budget={budget}: {tot/n*1e3:.2f} ms/q mean, p50 {np.median(lat)*1e3:.2f} ms")
for k in sorted(acc): print(f"  {k:40s} {acc[k]/n*1e3:7.2f} ms/q  {acc[k]/tot*100:5.1f}%")
print(f"  {'(rest: Q@C^T matmul, sort/unique, hits)':40s} {(tot-acc['2-3 probe + centroid interaction']-acc['4 exact rerank (read+decode+maxsim)'])/n*1e3:7.2f} ms/q")
