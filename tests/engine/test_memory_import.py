"""The CPU query path never imports torch, onnxruntime or zarr (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "onnxruntime", "zarr", "numcodecs")  # zarr ~20 MB of RSS (writer only); numcodecs: blosc, old stores only

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import lodestore, engine

    path, dim = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    q = rng.standard_normal((6, dim)).astype(np.float32)
    out = {"after_import": sorted(m for m in {HEAVY!r} if m in sys.modules)}
    for budget in ("all", 0):
        with lodestore.Searcher(path, memory_budget=budget) as s:
            one = s.search(q, k=3)
            many = s.search(np.stack([q, q]), k=3)
            sub = s.search(q, k=2, subset=[one[0][0]])
            assert len(one) == 3 and len(many) == 2 and sub[0][0] == one[0][0], (one, many, sub)
            out[s.placement.name] = sorted(m for m in {HEAVY!r} if m in sys.modules)
    with lodestore.Store.open(path) as st:
        lodestore.exhaustive_search(st, q, 3)
    out["exhaustive"] = sorted(m for m in {HEAVY!r} if m in sys.modules)
    print(json.dumps(out))
""").replace("{HEAVY!r}", repr(HEAVY))


def test_cpu_search_imports_neither_torch_nor_onnxruntime(template_store):
    """`import lodestore, engine` and CPU searches in every placement leave the heavy modules unloaded."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(template_store), "32"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"after_import", "all-in-RAM", "index-paged", "exhaustive"}, out
    for stage, loaded in out.items():
        assert loaded == [], f"{stage}: {loaded} imported by the CPU query path"
