"""`lodestore serve` as a real process: the Client, two workers under concurrent reads and writes, SIGKILL and restart."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[test,serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[test,serve]'")

import lodestore  # noqa: E402
from lodestore.client import BadRequestError, Client, ClientError, UnknownIdError  # noqa: E402

from .serving import SAMPLE, VEC_DOCS, VectorCorpus, restart, start_server  # noqa: E402

KEY = "live-key-0123456789abcdef"


def test_client_has_the_index_shapes(text_index: Path, tmp_path: Path) -> None:
    queries = [json.loads(line)["text"] for line in (SAMPLE / "queries.jsonl").read_text().splitlines()[:3]]
    with lodestore.Index.open(text_index) as index:
        expected = index.search(queries, k=4)
    key_file = tmp_path / "keys"
    key_file.write_text(KEY + "\n")
    with start_server(text_index, "--api-key-file", str(key_file), log_dir=tmp_path) as server:
        client = lodestore.Client(server.url, api_key=KEY)
        got = client.search(queries[0], k=4)
        assert [h.id for h in got] == [h.id for h in expected[0]]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected[0]], rel=1e-5)
        assert (got[0].title, got[0].text, got[0].metadata) == (expected[0][0].title, expected[0][0].text,
                                                                 expected[0][0].metadata)
        batch = client.search(queries, k=4)
        assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in expected]
        g = client.generation
        assert client.add(["c1"], ["Client-added text about magnetic resonance imaging."], [{"by": "client"}],
                          titles=["MRI"]) == g + 1
        assert client.search("magnetic resonance imaging", k=1)[0].metadata == {"by": "client"}
        with pytest.raises(BadRequestError) as bad:
            client.add(["c1"], ["duplicate"])
        assert isinstance(bad.value, ValueError) and bad.value.status == 409 and bad.value.field == "ids[0]"
        with pytest.raises(UnknownIdError) as unknown:
            client.delete(["no-such-doc"])
        assert isinstance(unknown.value, KeyError) and unknown.value.field == "ids[0]"
        with pytest.raises(ClientError) as denied:
            Client(server.url).delete(["c1"])  # no key
        assert denied.value.status == 401
        assert client.delete(["c1"]) == g + 2
        assert client.compact() == g + 3
        assert client.stats()["documents"] == len(index_ids(text_index))
        assert client.ready()


def index_ids(path: Path) -> list[str]:
    with lodestore.Store.open(path) as store:
        return store.ids()


def test_two_workers_answer_each_search_from_one_generation(vec_store: Path, vec_corpus: VectorCorpus,
                                                             tmp_path: Path) -> None:
    """Readers search for documents a writer adds, deletes and compacts away; every answer must agree with the
    generation it reports, and after the last write both workers answer from it."""
    extra = list(range(VEC_DOCS, VEC_DOCS + 4))
    probes = {vec_corpus.ids[i]: vec_corpus.docs[i] for i in extra}
    with start_server(vec_store, "--workers", "2", log_dir=tmp_path) as server:
        writer = Client(server.url)
        g0 = writer.stats()["generation"]
        live: dict[int, frozenset[str]] = {g0: frozenset()}
        answers: list[tuple[int, str, list[str]]] = []
        failures: list[BaseException] = []
        done = threading.Event()

        def read() -> None:
            client = Client(server.url)
            try:
                while not done.is_set():
                    for doc_id, q in probes.items():
                        hits = client.search(q, k=10)
                        answers.append((client.generation, doc_id, [h.id for h in hits]))
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(e)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        try:
            current: set[str] = set()
            steps = [("add", [vec_corpus.ids[extra[0]], vec_corpus.ids[extra[1]]]),
                     ("delete", [vec_corpus.ids[extra[0]]]), ("add", [vec_corpus.ids[extra[2]]]),
                     ("compact", []), ("delete", [vec_corpus.ids[extra[1]]]), ("add", [vec_corpus.ids[extra[3]]])]
            for op, ids in steps:
                if op == "add":
                    g = writer.add(ids, vectors=[probes[i] for i in ids])
                    current |= set(ids)
                elif op == "delete":
                    g = writer.delete(ids)
                    current -= set(ids)
                else:
                    g = writer.compact()
                live[g] = frozenset(current)
                time.sleep(0.3)
        finally:
            done.set()
            for t in readers:
                t.join(timeout=60)
        assert not failures, failures
        assert len(answers) > 20 and len({g for g, _, _ in answers}) >= 3  # reads did overlap the writes
        for generation, doc_id, ids in answers:
            assert generation in live, (generation, sorted(live))
            assert (doc_id in ids) == (doc_id in live[generation]), (generation, doc_id, ids)
        final = max(live)
        for _ in range(10):  # requests spread over both workers; each has moved to the last generation
            writer.search(probes[vec_corpus.ids[extra[3]]], k=10)
            assert writer.generation == final
        assert "Traceback" not in server.output()


def test_sigkilled_server_restarts_without_losing_committed_writes(vec_store: Path, vec_corpus: VectorCorpus,
                                                                  tmp_path: Path) -> None:
    ids = vec_corpus.ids[VEC_DOCS:VEC_DOCS + 6]
    docs = vec_corpus.docs[VEC_DOCS:VEC_DOCS + 6]
    with start_server(vec_store, log_dir=tmp_path) as server:
        client = Client(server.url)
        acknowledged = [client.add([i], vectors=[d]) for i, d in zip(ids[:4], docs[:4])]
        client.delete([ids[0]])
        in_flight = threading.Thread(target=lambda: _ignore_errors(lambda: Client(server.url).add(ids[4:], vectors=docs[4:])))
        in_flight.start()
        time.sleep(0.05)
        server.kill()  # SIGKILL to the whole process group, maybe mid-commit
        in_flight.join(timeout=60)
        restart(server, vec_store)
        client = Client(server.url)
        stats = client.stats()
        assert stats["generation"] >= acknowledged[-1] + 1
        for doc_id, doc in zip(ids[1:4], docs[1:4]):  # every acknowledged add is there ...
            assert doc_id in [h.id for h in client.search(doc, k=10)]
        assert ids[0] not in [h.id for h in client.search(docs[0], k=10)]  # ... and the acknowledged delete
        # the write that was killed either committed whole or not at all
        with lodestore.Store.open(vec_store) as store:
            assert store.verify().ok
            assert (ids[4] in store) == (ids[5] in store)
        assert client.add(["after-restart"], vectors=[docs[0]]) == stats["generation"] + 1


def _ignore_errors(fn) -> None:
    try:
        fn()
    except (ClientError, OSError):
        pass
