"""Search inside a memory limit that counts the page cache (tools/memlimit.py, cgroup v1): the
store cannot hide in RAM, most rows come from the device, and the answers are the same.

A child process opens a Searcher and runs a few queries (its working set), then holds itself to
its anonymous memory plus a quarter of the store's bytes plus a small margin, drops the store
from the page cache before every query, and searches with prefetch off and on.
Skipped, with the reason, where no memory cgroup can be made (not root, cgroup v2 only).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tools.memlimit import remove_leftovers, unavailable

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from tools.memlimit import MemoryLimit
    from tools.memstat import evict
    import lodestore

    store, queries = sys.argv[1], np.load(sys.argv[2])
    size = sum(f.stat().st_size for f in __import__("pathlib").Path(store).rglob("*") if f.is_file())
    with MemoryLimit(8 << 30) as lim:
        out = {}
        for prefetch in (False, True):
            with lodestore.Searcher(store, prefetch=prefetch) as s:
                for q in queries[:3]:
                    s.search(q, k=10)
                lim_bytes = lim.stats()["rss"] + size // 4 + (8 << 20)
                (lim.path / "memory.limit_in_bytes").write_text(str(lim_bytes))
                hits = []
                for q in queries:
                    evict([store])
                    hits.append([[i, float(v)] for i, v in s.search(q, k=10)])
                out[str(prefetch)] = hits
                st = lim.stats()
                (lim.path / "memory.limit_in_bytes").write_text(str(8 << 30))
            out["stats_" + str(prefetch)] = {**st, "limit": lim_bytes, "store": size}
    print(json.dumps(out))
""")


@pytest.mark.skipif(unavailable("memory") is not None, reason=f"no memory cgroup here: {unavailable('memory')}")
def test_search_under_a_memory_limit_equals_unlimited_search(engine_store_path, engine_queries, tmp_path):
    import lodestore

    qfile = tmp_path / "queries.npy"
    np.save(qfile, engine_queries[:12])
    with lodestore.Searcher(engine_store_path) as s:
        expected = [[[i, float(v)] for i, v in s.search(q, k=10)] for q in engine_queries[:12]]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(engine_store_path), str(qfile), str(ROOT)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child.communicate(timeout=300)
    finally:
        child.kill()
        remove_leftovers(child.pid)
    run = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for prefetch in ("False", "True"):
        stats = got["stats_" + prefetch]
        assert stats["usage"] <= stats["limit"], stats  # the limit held, page cache included
        assert [[h[0] for h in r] for r in got[prefetch]] == [[h[0] for h in r] for r in expected]
        np.testing.assert_allclose([[h[1] for h in r] for r in got[prefetch]],
                                   [[h[1] for h in r] for r in expected], rtol=1e-6)
