"""`lodestore convert-model` on tiny checkpoints made here from configs with random weights (no download).

Three checkpoints, each projecting to 48 dimensions: a 2-layer BERT in the PyLate /
sentence-transformers layout (WordPiece vocabulary, [unused0]/[unused1] prefixes, one
Dense), a 2-layer ModernBERT in the same layout (byte-level BPE vocabulary with its special
tokens at the end, "[Q] "/"[D] " added tokens, two Dense modules, attended expansion) and a
Stanford ColBERT one (BERT + linear, artifact.metadata, vocab.txt only). The converted
encoder's vectors are compared with a reference written here from each library's own
procedure (PyLate's prefix insertion and [MASK] expansion; Stanford's ". " placeholder),
run in torch on the checkpoint's own files: queries and documents, markers, padding,
expansion, truncation and skiplist included.
"""

from __future__ import annotations

import json
import re
import string
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lodestore.collection import Collection
from lodestore.text import Encoder, EncoderConfig
from lodestore.text.checkpoint import CheckpointError, read_checkpoint

torch = pytest.importorskip("torch", reason="lodestore[convert] is not installed")
transformers = pytest.importorskip("transformers", reason="lodestore[convert] is not installed")
from safetensors.torch import load_file, save_file  # noqa: E402  (after the extra's check)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from lodestore.text.convert import convert_model  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "tools" / "data" / "scifact-sample"
DIM = 48
QUERIES = [
    "What causes  insulin resistance?",
    "  cells, proteins and the immune system  ",
    "a very long query " + "about protein folding and gene expression in cells " * 6,
    "short",
]
DOCUMENTS = [
    "Insulin resistance is a hallmark of type 2 diabetes; obesity (and age) are risk factors!",
    "Gene expression, protein folding... and the cell cycle.",
    "A long document " + "on the immune response of cells to infection, in detail. " * 12,
    "x",
]


# -- tiny checkpoints -----------------------------------------------------------------------


def corpus_words() -> list[str]:
    text = " ".join(d["title"] + " " + d["text"] for d in Collection.load(SAMPLE, max_docs=40).docs)
    return [w for w, _ in Counter(re.findall(r"[a-z]+", text.lower())).most_common(400)]


def wordpiece(specials_first: bool) -> Tokenizer:
    """bert-base-uncased conventions; specials_first=False puts [CLS] & co. after the words."""
    specials = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    body = list(string.punctuation) + corpus_words() + [f"##{c}" for c in string.ascii_lowercase]
    vocab = {t: i for i, t in enumerate(specials + body if specials_first else body + specials)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    return tok


def byte_bpe() -> Tokenizer:
    """A ModernBERT-like byte-level BPE trained on the sample; its specials come after the merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [d["title"] + " " + d["text"] for d in Collection.load(SAMPLE, max_docs=40).docs]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    tok.add_tokens(["[Q] ", "[D] "])  # PyLate adds its prefixes as tokens
    return tok


def save_tokenizer(tok: Tokenizer, root: Path) -> transformers.PreTrainedTokenizerFast:
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                                mask_token="[MASK]", pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(root)
    return fast


def dense(root: Path, name: str, n_in: int, n_out: int, *, bias: bool, activation: str, seed: int) -> None:
    folder = root / name
    folder.mkdir()
    g = torch.Generator().manual_seed(seed)
    state = {"linear.weight": torch.randn(n_out, n_in, generator=g) / n_in**0.5}
    if bias:
        state["linear.bias"] = torch.randn(n_out, generator=g) * 0.1
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"in_features": n_in, "out_features": n_out, "bias": bias,
                                                    "activation_function": f"torch.nn.modules.{activation}"}))


def pylate_checkpoint(root: Path, backbone: torch.nn.Module, tok: Tokenizer, denses: list[dict],
                      settings: dict) -> Path:
    root.mkdir(parents=True)
    backbone.save_pretrained(root)
    save_tokenizer(tok, root)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    for i, spec in enumerate(denses, 1):
        dense(root, f"{i}_Dense", **spec, seed=i)
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": "pylate.models.Dense.Dense"})
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 511, "do_lower_case": False}))
    (root / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "MaxSim", **settings}))
    return root


def stanford_checkpoint(root: Path) -> Path:
    root.mkdir(parents=True)
    tok = wordpiece(specials_first=True)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128)).eval()
    g = torch.Generator().manual_seed(7)
    state = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    state["linear.weight"] = torch.randn(DIM, 32, generator=g) / 32**0.5
    save_file(state, str(root / "model.safetensors"))
    config = bert.config.to_dict() | {"architectures": ["HF_ColBERT"]}
    (root / "config.json").write_text(json.dumps(config))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (root / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab))
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    (root / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": 24, "doc_maxlen": 40,
        "dim": DIM, "mask_punctuation": True, "attend_to_mask_tokens": False, "similarity": "cosine"}))
    return root


BERT_SETTINGS = {"query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 24,
                 "document_length": 40, "do_query_expansion": True, "attend_to_expansion_tokens": False,
                 "skiplist_words": list(string.punctuation)}
MODERN_SETTINGS = {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 20, "document_length": 48,
                   "do_query_expansion": True, "attend_to_expansion_tokens": True,
                   "skiplist_words": list(string.punctuation)}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("checkpoints")
    wp = wordpiece(specials_first=True)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=wp.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128)).eval()
    bpe = byte_bpe()
    ids = {t: bpe.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")}
    modern = transformers.ModernBertModel(transformers.ModernBertConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, local_attention=8, global_attn_every_n_layers=2,
        pad_token_id=ids["[PAD]"], cls_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"],
        bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"])).eval()
    return {
        "bert": pylate_checkpoint(root / "bert", bert, wp, [dict(n_in=32, n_out=DIM, bias=False,
                                                                  activation="linear.Identity")], BERT_SETTINGS),
        "bert-no-expansion": pylate_checkpoint(root / "bert-plain", bert, wp, [dict(
            n_in=32, n_out=DIM, bias=False, activation="linear.Identity")],
            BERT_SETTINGS | {"do_query_expansion": False}),
        "modernbert": pylate_checkpoint(root / "modernbert", modern, bpe, [
            dict(n_in=32, n_out=64, bias=True, activation="activation.Tanh"),
            dict(n_in=64, n_out=DIM, bias=False, activation="linear.Identity")], MODERN_SETTINGS),
        "stanford": stanford_checkpoint(root / "stanford"),
    }


@pytest.fixture(scope="session")
def converted(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Each checkpoint converted once (fp32), plus the BERT one with int8 weights; converted lazily."""
    out = tmp_path_factory.mktemp("encoders")
    cache: dict[str, Path] = {}

    def get(name: str, quantize: str | None = None) -> Path:
        key = f"{name}-{quantize or 'fp32'}"
        if key not in cache:
            convert_model(checkpoints[name], out / key, quantize=quantize)
            cache[key] = out / key
        return cache[key]

    return get


# -- references: each library's own framing, run in torch ------------------------------------


def _normalized(rows: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(rows, dim=-1).numpy()


def pylate_reference(root: Path, settings: dict, texts: list[str], is_query: bool) -> list[np.ndarray]:
    """PyLate's ColBERT.encode: the Transformer module's tokenizer cut to length - 1, the prefix id
    inserted after [CLS], [MASK] padding for query expansion, Dense modules, kept rows normalized."""
    tok = transformers.AutoTokenizer.from_pretrained(root)
    backbone = transformers.AutoModel.from_pretrained(root).eval()
    layers = []
    for module in json.loads((root / "modules.json").read_text())[1:]:
        config = json.loads((root / module["path"] / "config.json").read_text())
        state = load_file(str(root / module["path"] / "model.safetensors"))
        activation = {"Identity": lambda x: x, "Tanh": torch.tanh}[config["activation_function"].rsplit(".", 1)[1]]
        layers.append((state["linear.weight"], state.get("linear.bias"), activation))
    expansion = is_query and settings["do_query_expansion"]
    if expansion:
        tok.pad_token = tok.mask_token
    length = settings["query_length" if is_query else "document_length"]
    enc = tok([t.strip() for t in texts], padding="max_length" if expansion else "longest", truncation=True,
              max_length=length - 1, return_tensors="pt")
    prefix = tok.convert_tokens_to_ids(settings["query_prefix" if is_query else "document_prefix"])
    n = len(texts)
    ids = torch.cat([enc["input_ids"][:, :1], torch.full((n, 1), prefix), enc["input_ids"][:, 1:]], dim=1)
    mask = torch.cat([enc["attention_mask"][:, :1], torch.ones(n, 1, dtype=torch.long), enc["attention_mask"][:, 1:]], 1)
    if expansion and settings["attend_to_expansion_tokens"]:
        mask.fill_(1)
    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        for weight, bias, activation in layers:
            hidden = activation(torch.nn.functional.linear(hidden, weight, bias))
    if is_query:
        keep = torch.ones_like(mask, dtype=torch.bool) if expansion else mask.bool()
    else:
        skip = torch.tensor(tok.convert_tokens_to_ids(settings["skiplist_words"]))
        keep = mask.bool() & ~torch.isin(ids, skip)
    return [_normalized(hidden[i][keep[i]]) for i in range(n)]


def stanford_reference(root: Path, texts: list[str], is_query: bool) -> list[np.ndarray]:
    """Stanford ColBERT's tokenizers and ColBERT.query/doc: ". " placeholder replaced by the marker,
    [PAD] turned into unattended [MASK] for queries, punctuation and padding masked in documents."""
    meta = json.loads((root / "artifact.metadata").read_text())
    tok = transformers.AutoTokenizer.from_pretrained(root)
    state = load_file(str(root / "model.safetensors"))
    bert = transformers.BertModel(transformers.BertConfig.from_pretrained(root)).eval()
    bert.load_state_dict({k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")})
    placeheld = [". " + t for t in texts]
    if is_query:
        enc = tok(placeheld, padding="max_length", truncation=True, max_length=meta["query_maxlen"], return_tensors="pt")
    else:
        enc = tok(placeheld, padding="longest", truncation="longest_first", max_length=meta["doc_maxlen"],
                  return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ids[:, 1] = tok.convert_tokens_to_ids(meta["query_token_id" if is_query else "doc_token_id"])
    if is_query:
        ids[ids == tok.pad_token_id] = tok.mask_token_id
    with torch.no_grad():
        hidden = bert(ids, attention_mask=mask)[0] @ state["linear.weight"].T
    skip = [] if is_query else [tok.encode(s, add_special_tokens=False)[0] for s in string.punctuation]
    keep = ~torch.isin(ids, torch.tensor(skip, dtype=torch.long)) & (ids != tok.pad_token_id)
    return [_normalized(hidden[i][keep[i]]) for i in range(len(texts))]


def reference(name: str, checkpoints: dict[str, Path], texts: list[str], is_query: bool) -> list[np.ndarray]:
    if name == "stanford":
        return stanford_reference(checkpoints[name], texts, is_query)
    settings = json.loads((checkpoints[name] / "config_sentence_transformers.json").read_text())
    return pylate_reference(checkpoints[name], settings, texts, is_query)


def assert_matches(encoder: Encoder, name: str, checkpoints: dict[str, Path], floor: float) -> None:
    """Queries (all query_length rows: expansion rows compared, padding rows zero) and documents
    (same kept tokens) agree with the reference row by row."""
    queries = encoder.encode_queries(QUERIES)
    for i, ref in enumerate(reference(name, checkpoints, QUERIES, is_query=True)):
        n = len(ref)
        if encoder.config.mask_query_padding:
            assert n == encoder.config.query_length  # every expansion row is a query vector
        assert np.all((queries[i, :n] * ref).sum(-1) >= floor), (name, "query", i)
        assert not queries[i, n:].any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long document is truncated
        documents = encoder.encode_documents(DOCUMENTS, batch_size=2)
    for i, (doc, ref) in enumerate(zip(documents, reference(name, checkpoints, DOCUMENTS, is_query=False), strict=True)):
        assert doc.shape == ref.shape, (name, "document", i)
        assert np.all((doc * ref).sum(-1) >= floor), (name, "document", i)


# -- equality with the torch forward ------------------------------------------------------------


@pytest.mark.parametrize("name", ["bert", "bert-no-expansion", "modernbert", "stanford"])
def test_converted_encoder_matches_the_checkpoint(name: str, checkpoints, converted) -> None:
    assert_matches(Encoder.from_dir(converted(name)), name, checkpoints, floor=0.9999)


@pytest.mark.parametrize("name", ["bert", "modernbert"])
def test_int8_encoder_stays_close(name: str, checkpoints, converted) -> None:
    path = converted(name, "int8")
    assert (path / "model.onnx").stat().st_size < (converted(name) / "model.onnx").stat().st_size
    assert_matches(Encoder.from_dir(path), name, checkpoints, floor=0.99)


# -- what the encoder directory says ------------------------------------------------------------


def test_encoder_json_speaks_in_the_checkpoints_terms(converted) -> None:
    import onnxruntime

    saved = json.loads((converted("modernbert") / "encoder.json").read_text())
    assert saved["version"] == 2
    assert (saved["query_prefix"], saved["document_prefix"]) == ("[Q] ", "[D] ")
    assert (saved["cls_token"], saved["sep_token"], saved["mask_token"], saved["pad_token"]) == (
        "[CLS]", "[SEP]", "[MASK]", "[PAD]")
    assert not [k for k in saved if k.endswith("_id")], "tokens are named, never given as BERT ids"
    assert saved["mask_query_padding"] and "attend_to_expansion_tokens" not in saved  # attended: the default
    encoder = Encoder.from_dir(converted("modernbert"))
    tok = Tokenizer.from_file(str(converted("modernbert") / "tokenizer.json"))
    ids = encoder.special_ids
    assert (ids.cls, ids.sep, ids.mask, ids.query_marker) == (
        tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("[MASK]"), tok.token_to_id("[Q] "))
    assert ids.cls > 500  # after the BPE merges: nothing like BERT's 101
    for name in ("bert", "modernbert", "stanford"):
        session = onnxruntime.InferenceSession(str(converted(name) / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]


def test_query_framing_follows_the_checkpoint(converted) -> None:
    bert = Encoder.from_dir(converted("bert"))  # [unused0] prefix, expansion not attended
    ids, mask = bert.tokenize_queries(["the"])
    row = ids[0].tolist()
    assert row[:4] == [4, 1, bert._framer._tokenizer.token_to_id("the"), 5]  # [CLS] [unused0] the [SEP]
    assert row[4:] == [6] * 20 and mask[0].tolist() == [1] * 4 + [0] * 20  # [MASK] expansion, not attended
    assert np.all(np.linalg.norm(bert.encode_queries(["the"])[0], axis=1) > 0.99)  # yet kept as query vectors
    modern = Encoder.from_dir(converted("modernbert"))
    _, mask = modern.tokenize_queries(["the"])
    assert mask.all()  # attended expansion
    plain = Encoder.from_dir(converted("bert-no-expansion"))
    ids, mask = plain.tokenize_queries(["the"])
    assert ids[0, 4:].tolist() == [0] * 20 and not mask[0, 4:].any()
    stanford = json.loads((converted("stanford") / "encoder.json").read_text())
    assert (stanford["query_prefix"], stanford["query_length"], stanford["doc_max_length"]) == ("[unused0]", 24, 40)
    assert stanford["attend_to_expansion_tokens"] is False and stanford["dim"] == DIM


# -- the three commands of the README -------------------------------------------------------------


def test_convert_index_query_from_the_command_line(checkpoints, tmp_path: Path, capsys) -> None:
    from lodestore import cli

    model, index = tmp_path / "my-encoder", str(tmp_path / "my-index")
    assert cli.main(["convert-model", str(checkpoints["bert"]), str(model)]) == 0
    assert "min cosine" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["index", index, "--collection", str(SAMPLE), "--encoder", str(model), "--max-docs", "20",
                         "--centroids", "8", "--quiet", "--threads", "1"]) == 0
    first = Collection.load(SAMPLE, max_docs=1).docs[0]
    capsys.readouterr()
    assert cli.main(["query", index, first["title"], "--encoder", str(model), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
    assert cli.main(["query", index, first["title"]]) == 2  # the packaged MiniLM did not build it
    assert "--encoder" in capsys.readouterr().err
    from starlette.testclient import TestClient

    from lodestore.server import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(index, encoder_dir=str(model)))) as client:  # lodestore serve --encoder
        served = client.post("/search", json={"query": first["title"], "k": 3}).json()
    assert [h["id"] for h in served["hits"]] == [h["id"] for h in hits]


# -- bad checkpoints: a clear message, nothing written -----------------------------------------------


def _copy(src: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, tmp_path / "ckpt"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "modules.json").unlink(), "no modules.json"),
        (lambda r: (r / "1_Dense" / "model.safetensors").unlink(), "1_Dense: missing weights"),
        (lambda r: (r / "1_Dense" / "config.json").unlink(), "1_Dense: missing config.json"),
        (lambda r: (r / "model.safetensors").unlink(), "missing weights"),
        (lambda r: (r / "tokenizer.json").unlink(), "missing tokenizer.json"),
        (lambda r: __import__("shutil").rmtree(r / "1_Dense"), "module folder '1_Dense'"),
        (lambda r: (r / "config.json").write_text(json.dumps({"model_type": "gpt2", "hidden_size": 32})),
         "unknown architecture 'gpt2'"),
        (lambda r: (r / "modules.json").write_text(json.dumps([{"path": "", "type": "x.Transformer"}])),
         "no Dense module"),
        (lambda r: (r / "config_sentence_transformers.json").write_text(json.dumps({"query_prefix": "[nope]"})),
         "query prefix '\\[nope\\]' is not a token"),
        (lambda r: (r / "1_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 64})),
         "linear.weight is \\[48, 32\\]"),
        (lambda r: (r / "modules.json").write_text("{}"), "modules.json: expected a JSON list"),
        (lambda r: (r / "config_sentence_transformers.json").write_text("[1,"), "not readable JSON"),
    ],
    ids=["no-modules", "no-dense-weights", "no-dense-config", "no-backbone-weights", "no-tokenizer",
         "no-dense-folder", "unknown-architecture", "no-dense", "prefix-not-a-token", "dense-shape",
         "modules-not-a-list", "bad-json"],
)
def test_bad_checkpoint_fails_clearly_and_writes_nothing(damage, message: str, checkpoints, tmp_path: Path) -> None:
    root = _copy(checkpoints["bert"], tmp_path)
    damage(root)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=message):
        convert_model(root, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half-written temporary either


def test_stanford_without_projection_and_bad_targets(checkpoints, tmp_path: Path) -> None:
    root = _copy(checkpoints["stanford"], tmp_path)
    state = load_file(str(root / "model.safetensors"))
    del state["linear.weight"]
    save_file(state, str(root / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no linear.weight"):
        read_checkpoint(root)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        convert_model(checkpoints["bert"], tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="quantize"):
        convert_model(checkpoints["bert"], tmp_path / "new", quantize="int4")
    with pytest.raises(CheckpointError, match="not a directory"):
        read_checkpoint(tmp_path / "absent")


def test_checkpoint_settings_and_defaults(checkpoints, tmp_path: Path) -> None:
    ckpt = read_checkpoint(checkpoints["modernbert"])
    assert (ckpt.layout, ckpt.model_type, ckpt.dim, ckpt.query_length, ckpt.document_length) == (
        "pylate", "modernbert", DIM, 20, 48)
    assert [d.activation for d in ckpt.dense] == ["Tanh", "Identity"] and ckpt.defaulted == ()
    root = _copy(checkpoints["bert"], tmp_path)
    (root / "config_sentence_transformers.json").unlink()
    ckpt = read_checkpoint(root)
    assert (ckpt.query_prefix, ckpt.query_length, ckpt.document_length, ckpt.query_expansion) == ("[Q] ", 32, 180, True)
    assert "query_prefix" in ckpt.defaulted


# -- EncoderConfig version 2 -------------------------------------------------------------------


def test_config_versions() -> None:
    v1 = EncoderConfig()
    assert v1.version == 1 and "version" not in v1.to_dict() and "query_prefix" not in v1.to_dict()
    v2 = EncoderConfig(query_prefix="[Q] ", cls_token="<s>", attend_to_expansion_tokens=False)
    saved = v2.to_dict()
    assert saved["version"] == 2 and "query_marker_id" not in saved and "cls_token_id" not in saved
    assert v2.query_marker_id is None and v2.doc_marker_id == 2  # the string replaces its id only
    assert EncoderConfig.from_dict(json.loads(json.dumps(saved))) == v2
    assert EncoderConfig.from_dict({"version": 1, "query_length": 16}).query_length == 16
    with pytest.raises(ValueError, match="version 3 is not one this lodestore reads"):
        EncoderConfig.from_dict({"version": 3})
    with pytest.raises(ValueError, match="give cls_token_id or cls_token"):
        EncoderConfig(cls_token_id=None)
    with pytest.raises(ValueError, match="cls_token must not be empty"):
        EncoderConfig(cls_token="")


def test_empty_prefix_means_no_marker() -> None:
    encoder = Encoder.default(query_prefix="", document_prefix="", intra_op_num_threads=1)
    ids, _ = encoder.tokenize_queries(["hello world"])
    assert ids[0, :4].tolist() == [101, 7592, 2088, 102]  # [CLS] hello world [SEP]: no marker
    assert encoder.tokenize_documents(["hello world"]) == [[101, 7592, 2088, 102]]
    with pytest.raises(ValueError, match="query_prefix='\\[Q\\] ' is not a token"):
        Encoder.default(query_prefix="[Q] ")


def test_documents_only_identity_ignores_query_only_version_2_fields() -> None:
    """Document vectors made under other query settings, version-2 ones included, are accepted."""
    enc = Encoder.default(intra_op_num_threads=1)
    other = Encoder.default(intra_op_num_threads=1, mask_query_padding=True, attend_to_expansion_tokens=False)
    assert other.config.version == 2
    enc.check_identity(other.identity(), documents_only=True)
    with pytest.raises(ValueError, match="attend_to_expansion_tokens"):
        enc.check_identity(other.identity())
    with pytest.raises(ValueError, match=r"config \(doc_marker_id, document_prefix\)"):
        enc.check_identity(Encoder.default(intra_op_num_threads=1, document_prefix="[unused1]").identity(),
                           documents_only=True)
