"""What a ColBERT checkpoint directory holds, read from its JSON files alone (no torch).

Two layouts are understood (``lodestore convert-model`` turns either into an encoder directory):

* PyLate / sentence-transformers: ``modules.json`` lists a Transformer module (the
  backbone, usually at the root) and one or more Dense modules (``N_Dense/config.json``
  and weights), and ``config_sentence_transformers.json`` holds the ColBERT settings:
  query/document prefixes, query and document lengths, query expansion, attention to
  expansion tokens, skiplist words. Settings it lacks take PyLate's defaults.
* Stanford ColBERT: a Hugging Face checkpoint whose ``config.json`` names the
  ``HF_ColBERT`` architecture, with a ``linear`` projection beside the backbone's weights,
  and ``artifact.metadata`` (the ColBERT config: dim, query_maxlen, doc_maxlen, marker
  tokens, mask_punctuation, attend_to_mask_tokens). Settings it lacks take ColBERT's defaults.

:func:`read_checkpoint` checks that every file the conversion needs is there and that the
backbone is an architecture it knows, and raises :class:`CheckpointError` naming what is
missing, before anything is loaded or written.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Backbones whose export is tested (config.json's model_type).
SUPPORTED_MODEL_TYPES = ("bert", "modernbert")
#: Weight files of a module, in the order they are looked for.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Sharded weights: an index naming the shard files.
SHARDED_INDEX = "model.safetensors.index.json"
#: Tokenizer files: the fast tokenizer, or a WordPiece vocabulary it can be built from.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
#: Dense activation functions (sentence-transformers stores the torch class path) by class name.
ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU")

#: PyLate's defaults for settings config_sentence_transformers.json lacks.
PYLATE_DEFAULTS: dict[str, Any] = {
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 32,
    "document_length": 180,
    "do_query_expansion": True,
    "attend_to_expansion_tokens": False,
    "skiplist_words": list(string.punctuation),
}
#: Stanford ColBERT's defaults (its ColBERTConfig) for settings artifact.metadata lacks.
STANFORD_DEFAULTS: dict[str, Any] = {
    "query_token_id": "[unused0]",
    "doc_token_id": "[unused1]",
    "query_maxlen": 32,
    "doc_maxlen": 220,
    "attend_to_mask_tokens": False,
    "mask_punctuation": True,
}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be converted; the message names what is missing or wrong."""


@dataclass(frozen=True)
class DenseLayer:
    """One projection after the backbone: ``activation(x @ W.T + b)`` (+ a residual if asked)."""

    weights: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a name in ACTIVATIONS
    use_residual: bool = False
    prefix: str = "linear."  # of its keys in the weights file


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory, read and checked: where each part is and the ColBERT settings."""

    root: Path
    layout: str  # "pylate" or "stanford"
    backbone: Path  # directory of the backbone's config.json and weights
    tokenizer: Path  # directory of its tokenizer files
    model_type: str
    hidden_size: int
    max_positions: int | None
    dense: tuple[DenseLayer, ...]
    query_prefix: str
    document_prefix: str
    query_length: int
    document_length: int
    query_expansion: bool
    attend_to_expansion_tokens: bool
    skiplist_words: tuple[str, ...]
    #: Settings the checkpoint did not state, taken from its library's defaults.
    defaulted: tuple[str, ...] = field(default=())

    @property
    def dim(self) -> int:
        """Length of the output vectors."""
        return self.dense[-1].out_features


def read_checkpoint(src: str | Path) -> Checkpoint:
    """Read and check a checkpoint directory (see the module docstring for the two layouts)."""
    root = Path(src)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    if (root / "modules.json").is_file():
        return _read_pylate(root)
    config = _json(root / "config.json", "the backbone's config") if (root / "config.json").is_file() else None
    if config is not None and "HF_ColBERT" in (config.get("architectures") or []):
        return _read_stanford(root, config)
    raise CheckpointError(
        f"{root}: not a ColBERT checkpoint: no modules.json (PyLate / sentence-transformers layout) "
        "and no config.json naming the HF_ColBERT architecture (Stanford ColBERT layout)"
    )


# -- PyLate / sentence-transformers ------------------------------------------------------


def _read_pylate(root: Path) -> Checkpoint:
    modules = _json(root / "modules.json", "the module list", list)
    if not modules or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{root / 'modules.json'}: expected a non-empty list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[0] != "Transformer":
        raise CheckpointError(f"{root / 'modules.json'}: the first module is {modules[0].get('type')!r}, "
                              "not a sentence-transformers Transformer")
    backbone = _module_dir(root, modules[0])
    dense = []
    for module, kind in zip(modules[1:], kinds[1:]):
        if kind == "Dense":
            dense.append(_read_dense(_module_dir(root, module)))
        elif kind not in ("Normalize", "Pooling"):  # vectors are normalized anyway; PyLate drops Pooling
            raise CheckpointError(f"{root / 'modules.json'}: module {module.get('type')!r} is not one "
                                  "lodestore can convert (Transformer, Dense, Normalize)")
    if not dense:
        raise CheckpointError(f"{root / 'modules.json'}: no Dense module: a ColBERT checkpoint projects "
                              "the backbone's token states with at least one")
    st_config = backbone / "sentence_bert_config.json"
    if st_config.is_file() and _json(st_config, "the Transformer module's config").get("do_lower_case"):
        raise CheckpointError(f"{st_config}: do_lower_case=true is not supported (lowercase in the tokenizer)")
    settings_file = root / "config_sentence_transformers.json"
    stated = _json(settings_file, "the ColBERT settings") if settings_file.is_file() else {}
    settings = {k: stated[k] if stated.get(k) is not None else v for k, v in PYLATE_DEFAULTS.items()}
    defaulted = tuple(k for k in PYLATE_DEFAULTS if stated.get(k) is None)
    expansion = bool(settings["do_query_expansion"])
    return _finish(
        root, "pylate", backbone, backbone, tuple(dense),
        query_prefix=settings["query_prefix"], document_prefix=settings["document_prefix"],
        query_length=settings["query_length"], document_length=settings["document_length"],
        query_expansion=expansion,
        attend_to_expansion_tokens=expansion and bool(settings["attend_to_expansion_tokens"]),
        skiplist_words=settings["skiplist_words"], defaulted=defaulted,
    )


def _module_dir(root: Path, module: dict[str, Any]) -> Path:
    path = module.get("path", "")
    if not isinstance(path, str) or Path(path).is_absolute() or ".." in Path(path).parts:
        raise CheckpointError(f"{root / 'modules.json'}: module path {path!r} is not inside the checkpoint")
    folder = root / path
    if not folder.is_dir():
        raise CheckpointError(f"{root}: module folder {path!r} (named in modules.json) is missing")
    return folder


def _read_dense(folder: Path) -> DenseLayer:
    config = _json(folder / "config.json", "the Dense module's config")
    try:
        in_features, out_features = int(config["in_features"]), int(config["out_features"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{folder / 'config.json'}: needs integer in_features and out_features") from None
    activation = str(config.get("activation_function") or "torch.nn.modules.linear.Identity")
    name = activation.rsplit(".", 1)[-1]
    if not activation.startswith("torch.") or name not in ACTIVATIONS:
        raise CheckpointError(f"{folder / 'config.json'}: activation {activation!r} is not supported "
                              f"(torch.nn {', '.join(ACTIVATIONS)})")
    layer = DenseLayer(_weights_file(folder), in_features, out_features, bool(config.get("bias", True)), name,
                       bool(config.get("use_residual", False)))
    shapes = _safetensors_shapes(layer.weights)
    if shapes is not None and shapes.get("linear.weight") != [out_features, in_features]:
        raise CheckpointError(f"{layer.weights}: linear.weight is {shapes.get('linear.weight', 'missing')}, "
                              f"config.json says [{out_features}, {in_features}]")
    return layer


# -- Stanford ColBERT --------------------------------------------------------------------


def _read_stanford(root: Path, config: dict[str, Any]) -> Checkpoint:
    weights = _weights_file(root)
    metadata_file = root / "artifact.metadata"
    stated = _json(metadata_file, "the ColBERT config") if metadata_file.is_file() else {}
    settings = {k: stated[k] if stated.get(k) is not None else v for k, v in STANFORD_DEFAULTS.items()}
    defaulted = tuple(k for k in STANFORD_DEFAULTS if stated.get(k) is None)
    shapes = _safetensors_shapes(weights)
    if shapes is not None and "linear.weight" not in shapes:
        raise CheckpointError(f"{weights}: no linear.weight: the HF_ColBERT projection is missing")
    out_features, in_features = shapes["linear.weight"] if shapes else (stated.get("dim"), _hidden_size(root, config))
    if not isinstance(out_features, int):
        raise CheckpointError(f"{root}: the projection's dim is unknown (no artifact.metadata dim; weights not safetensors)")
    if stated.get("dim") not in (None, out_features):
        raise CheckpointError(f"{metadata_file}: dim {stated['dim']} but linear.weight projects to {out_features}")
    linear = DenseLayer(weights, in_features, out_features, False, "Identity")
    return _finish(
        root, "stanford", root, root, (linear,),
        query_prefix=settings["query_token_id"], document_prefix=settings["doc_token_id"],
        query_length=settings["query_maxlen"], document_length=settings["doc_maxlen"],
        query_expansion=True, attend_to_expansion_tokens=bool(settings["attend_to_mask_tokens"]),
        skiplist_words=list(string.punctuation) if settings["mask_punctuation"] else [],
        defaulted=defaulted,
    )


# -- shared ------------------------------------------------------------------------------


def _finish(root: Path, layout: str, backbone: Path, tokenizer: Path, dense: tuple[DenseLayer, ...],
            **settings: Any) -> Checkpoint:
    """Check the backbone and tokenizer files and the settings' types; build the Checkpoint."""
    config = _json(backbone / "config.json", "the backbone's config")
    model_type = str(config.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{backbone / 'config.json'}: unknown architecture {model_type or '(none)'!r} "
                              f"(model_type); supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if layout == "pylate":
        _weights_file(backbone)
    if not any((tokenizer / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{tokenizer}: missing tokenizer.json (or a WordPiece vocab.txt)")
    for name in ("query_prefix", "document_prefix"):
        if not isinstance(settings[name], str):
            raise CheckpointError(f"{root}: {name} must be a string, got {settings[name]!r}")
    for name in ("query_length", "document_length"):
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 4:
            raise CheckpointError(f"{root}: {name} must be an integer >= 4, got {value!r}")
    words = settings["skiplist_words"]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise CheckpointError(f"{root}: skiplist words must be a list of strings, got {words!r}")
    settings["skiplist_words"] = tuple(words)
    hidden = _hidden_size(backbone, config)
    width = hidden
    for layer in dense:
        if layer.in_features != width:
            raise CheckpointError(f"{layer.weights.parent}: a projection from {layer.in_features} dimensions "
                                  f"follows one giving {width}")
        width = layer.out_features
    positions = config.get("max_position_embeddings")
    return Checkpoint(root=root, layout=layout, backbone=backbone, tokenizer=tokenizer, model_type=model_type,
                      hidden_size=hidden, max_positions=positions if isinstance(positions, int) else None,
                      dense=dense, **settings)


def _hidden_size(folder: Path, config: dict[str, Any]) -> int:
    hidden = config.get("hidden_size")
    if not isinstance(hidden, int) or hidden < 1:
        raise CheckpointError(f"{folder / 'config.json'}: no hidden_size")
    return hidden


def _weights_file(folder: Path) -> Path:
    for name in (*WEIGHT_FILES, SHARDED_INDEX):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: missing weights ({' or '.join((*WEIGHT_FILES, SHARDED_INDEX))})")


def _safetensors_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor shapes from a safetensors file's JSON header (None for another format)."""
    if path.name != "model.safetensors":
        return None
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100_000_000:
                raise ValueError(f"header size {size}")
            header = json.loads(f.read(size))
        return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _json(path: Path, what: str, kind: type = dict) -> Any:
    """A JSON file's content, an object (or ``kind``); a missing or unreadable file is a CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: missing {path.name} ({what})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, kind):
        raise CheckpointError(f"{path}: expected a JSON {'object' if kind is dict else 'list'} ({what})")
    return data
