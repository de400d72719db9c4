"""Only a head of a long text is tokenized, and the ids are those of the whole text.

The tokenizer is wrapped in a spy that records the length of every text it is handed,
so "a 10 MB text is never tokenized whole" is asserted on those inputs, not on memory
or time. Exactness is checked against tokenizing the whole text, with the windows
shrunk so that short texts take every path (cut, last word dropped, retried, ceiling).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lodestore.collection import Collection, doc_text
from lodestore.text import Encoder, framing
from lodestore.text.framing import Framer

SAMPLE = Path(__file__).resolve().parents[2] / "tools" / "data" / "scifact-sample"
TEN_MB = 10 * 1024 * 1024


class SpyTokenizer:
    """Delegates to a tokenizers.Tokenizer and records the length of every text it tokenizes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lengths: list[int] = []

    def encode(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.inner.encode(text, **kwargs)

    def encode_batch(self, texts, **kwargs):
        self.lengths += [len(t) for t in texts]
        return self.inner.encode_batch(texts, **kwargs)


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return Encoder.default(intra_op_num_threads=2)


@pytest.fixture()
def spy(enc: Encoder):
    framer = enc._framer
    inner = framer._tokenizer
    framer._tokenizer = SpyTokenizer(inner)
    try:
        yield framer._tokenizer
    finally:
        framer._tokenizer = inner


@pytest.fixture(scope="module")
def prose() -> str:
    """Real abstracts, about 40 KB: long enough to be cut, short enough to tokenize whole."""
    return " ".join(doc_text(d) for d in Collection.load(SAMPLE, max_docs=30).docs)


def _full_ids(enc: Encoder, text: str) -> list[int]:
    return enc._framer._tokenizer.encode(text, add_special_tokens=False).ids


@pytest.fixture()
def tiny_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 1 to 16 characters per token: short texts are cut, retried and hit the ceiling."""
    monkeypatch.setattr(framing, "CHARS_PER_TOKEN", 1)
    monkeypatch.setattr(framing, "MAX_CHARS_PER_TOKEN", 16)


# -- bounded input ---------------------------------------------------------------------


def test_ten_megabyte_document_tokenizes_only_a_head(enc: Encoder, spy: SpyTokenizer, prose: str) -> None:
    huge = (prose + " ") * (TEN_MB // len(prose) + 1)
    with pytest.warns(UserWarning, match="1 document\\(s\\) truncated to doc_max_length=300"):
        [vectors] = enc.encode_documents([huge])
    want = enc.config.doc_max_length - 3 + 1
    assert spy.lengths and max(spy.lengths) <= want * framing.CHARS_PER_TOKEN
    assert len(spy.lengths) == 1, "prose fits the first window: one tokenizer call"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [reference] = enc.encode_documents([prose])  # the same first 297 word pieces
    np.testing.assert_array_equal(vectors, reference)


def test_ten_megabyte_query_tokenizes_only_a_head(enc: Encoder, spy: SpyTokenizer, prose: str) -> None:
    huge = (prose + " ") * (TEN_MB // len(prose) + 1)
    vectors = enc.encode_queries([huge])
    assert max(spy.lengths) <= (enc.config.query_length - 2) * framing.CHARS_PER_TOKEN
    np.testing.assert_array_equal(vectors, enc.encode_queries([prose]))


@pytest.mark.parametrize(
    "hostile",
    [
        "start" + " " * TEN_MB + "end",  # a whitespace flood: few tokens in any head
        "a," * (TEN_MB // 2),  # no whitespace at all: the head is cut hard
        "x" * TEN_MB,  # one 10 MB word
    ],
    ids=["whitespace-flood", "no-whitespace", "one-word"],
)
def test_hostile_texts_stay_bounded(enc: Encoder, spy: SpyTokenizer, hostile: str) -> None:
    want = enc.config.doc_max_length - 3 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [ids] = enc.tokenize_documents([hostile])
    assert max(spy.lengths) <= want * framing.MAX_CHARS_PER_TOKEN
    assert len(spy.lengths) <= 5  # the first window and at most four quadruplings to the ceiling
    assert ids[:2] == [enc.config.cls_token_id, enc.config.doc_marker_id] and len(ids) <= enc.config.doc_max_length


def test_index_add_of_a_ten_megabyte_text(tmp_path: Path, enc: Encoder, spy: SpyTokenizer, prose: str) -> None:
    from lodestore import Index

    huge = (prose + " ") * (TEN_MB // len(prose) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.create(tmp_path / "i", enc, num_centroids=4) as index:
            index.add(["huge", "small"], [huge, "a short note about retrieval"])
            assert index.documents(["huge"])[0]["text"] == huge  # the whole text is kept as the payload
            assert index.search(prose[:200], k=1)[0].id == "huge"
    assert max(spy.lengths) <= (enc.config.doc_max_length - 2) * framing.CHARS_PER_TOKEN


# -- exactness -------------------------------------------------------------------------


def test_normal_texts_encode_identically_with_and_without_the_cut(
    enc: Encoder, prose: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [prose[:n] for n in (50, 900, 2400, 2500, 6000)] + [prose]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut_docs = enc.encode_documents(texts)
        cut_queries = enc.encode_queries(texts)
        monkeypatch.setattr(framing, "CHARS_PER_TOKEN", 10**9)  # the first window holds every text: no cut
        whole_docs = enc.encode_documents(texts)
        whole_queries = enc.encode_queries(texts)
    for a, b in zip(cut_docs, whole_docs, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cut_queries, whole_queries)


def test_cut_ids_equal_whole_text_ids_on_every_path(enc: Encoder, prose: str, tiny_windows: None) -> None:
    framer: Framer = enc._framer
    for limit in (1, 5, 31, 297):
        for text in (prose[:3000], "one  two\t\tthree\n" * 40, "Übergrößen, naïve café; 東京 タワー " * 30):
            assert framer.tokenize([text], limit) == [_full_ids(enc, text)[: limit + 1]], (limit, text[:40])


words = st.sampled_from(["the", "protein", "unbelievably", "naïve", "x", "東京", ",", ".", "(", "42", "3.5", "é"])
gaps = st.sampled_from([" ", "  ", "\n", "\t ", ""])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.tuples(words, gaps), min_size=1, max_size=120), limit=st.integers(1, 40))
def test_cut_ids_equal_whole_text_ids_property(enc: Encoder, tiny_windows: None, pieces, limit: int) -> None:
    text = "".join(w + g for w, g in pieces)
    if not text.strip():
        return
    full = _full_ids(enc, text)
    if not full:
        return
    window = (limit + 1) * framing.MAX_CHARS_PER_TOKEN
    if len(full) > limit and len(text) > window and len(_full_ids(enc, text[:window])) <= limit:
        return  # fewer than limit + 1 tokens in the ceiling's head: that head's tokens, by design
    assert enc._framer.tokenize([text], limit) == [full[: limit + 1]]


def test_empty_and_tokenless_texts_refused(enc: Encoder) -> None:
    with pytest.raises(ValueError, match="text 1 is empty"):
        enc._framer.tokenize(["fine", " \n\t "], 5)
    with pytest.raises(ValueError, match="text 0 has no tokens"):
        enc._framer.tokenize(["\u200b"], 5)  # a zero-width space: not whitespace to Python, no tokens
