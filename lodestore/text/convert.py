"""``lodestore convert-model``: a ColBERT checkpoint directory to a lodestore encoder directory.

The output is what :meth:`lodestore.text.Encoder.from_dir` loads: ``model.onnx`` (the
backbone and its projections, token ids and attention mask in, one vector per token out),
``tokenizer.json`` (the checkpoint's own) and ``encoder.json`` (an EncoderConfig in the
checkpoint's own terms: prefix strings, special tokens named as its tokenizer names them,
query expansion, skiplist). Optionally the model's weights become int8 (onnxruntime's
dynamic quantization).

Needs the optional extra ``lodestore[convert]`` (torch, transformers, onnx); nothing on the
indexing or search path imports this module. The export uses torch's TorchScript-based
ONNX exporter, which runs offline on the CPU without onnxscript. Before the directory is
published, the exported model is run on sample texts and compared with the torch forward
of the checkpoint; every file is written to a temporary sibling of OUT, renamed into place
at the end, so a failed conversion leaves OUT as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, read_checkpoint
from .config import CONFIG_FILE, MAX_POSITIONS, MODEL_FILE, TOKENIZER_FILE, EncoderConfig

if TYPE_CHECKING:
    import torch

#: Quantization modes of --quantize.
QUANTIZE_MODES = ("int8",)
#: The exported graph must agree with the torch forward at least this well (cosine per token).
MIN_COSINE_FP32 = 0.9999
#: Below this, an int8 conversion's report advises the float32 one.
ADVISED_COSINE_INT8 = 0.99
#: Texts the export is checked on: queries, and documents with punctuation (skiplist) and padding.
CHECK_TEXTS = (
    "what is late interaction retrieval?",
    "Token vectors, one per word piece: each query token finds its best match in a document.",
    "short text",
)
ONNX_OPSET = 17


@dataclass(frozen=True)
class ConvertReport:
    """What convert_model wrote, and the settings the encoder directory now holds."""

    out: Path
    layout: str
    model_type: str
    config: EncoderConfig
    quantize: str | None
    min_cosine: float  # of the exported model's vectors against the torch forward
    notes: tuple[str, ...]

    def lines(self) -> list[str]:
        """A human-readable summary, one fact a line."""
        c = self.config
        expansion = ("[MASK] padding, " + ("attended" if c.attend_to_expansion_tokens else "not attended")
                     if c.mask_query_padding else "off")
        return [
            f"wrote {self.out} ({self.layout} checkpoint, {self.model_type} backbone"
            f"{', int8 weights' if self.quantize else ''})",
            f"dim {c.dim}, query length {c.query_length}, document length {c.doc_max_length}, "
            f"prefixes {c.query_prefix!r} / {c.document_prefix!r}, query expansion {expansion}, "
            f"{len(c.skiplist)} skiplist tokens",
            f"exported model vs torch: min cosine {self.min_cosine:.6f}",
            *self.notes,
        ]


def convert_model(src: str | os.PathLike, out: str | os.PathLike, *, quantize: str | None = None) -> ConvertReport:
    """Convert the checkpoint at ``src`` into an encoder directory at ``out`` (new, or empty).

    Raises CheckpointError (a ValueError) naming what is missing or unsupported; nothing is
    written to ``out`` unless the whole conversion succeeds.
    """
    if quantize not in (None, *QUANTIZE_MODES):
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty directory")
    ckpt = read_checkpoint(src)
    _require_extra()
    notes: list[str] = []
    if ckpt.defaulted:
        notes.append(f"not stated by the checkpoint, library defaults used: {', '.join(ckpt.defaulted)}")
    tokenizer_text, specials = _tokenizer(ckpt)
    config = _encoder_config(ckpt, tokenizer_text, specials, notes)
    from .torch_model import load_torch_model

    module = load_torch_model(ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        fp32 = work / ("model.fp32.onnx" if quantize else MODEL_FILE)
        _export(module, fp32)
        if quantize:
            _quantize_int8(fp32, work / MODEL_FILE)
            fp32.unlink()
        (work / TOKENIZER_FILE).write_text(tokenizer_text, encoding="utf-8")
        (work / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
        min_cosine = _check_export(module, work, floor=None if quantize else MIN_COSINE_FP32)
        _fsync_files(work)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(work, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if quantize and min_cosine < ADVISED_COSINE_INT8:
        notes.append(f"int8 vectors differ from the checkpoint's (min cosine {min_cosine:.4f} < "
                     f"{ADVISED_COSINE_INT8}): consider the float32 conversion")
    return ConvertReport(out, ckpt.layout, ckpt.model_type, config, quantize, min_cosine, tuple(notes))


# -- pieces ------------------------------------------------------------------------------


def _require_extra() -> None:
    """A clear error when the optional extra is not installed."""
    import importlib.util

    absent = [m for m in ("torch", "transformers", "onnx", "safetensors") if importlib.util.find_spec(m) is None]
    if absent:
        raise ModuleNotFoundError(f"convert-model needs {', '.join(absent)}: pip install 'lodestore[convert]'")


def _tokenizer(ckpt: Checkpoint) -> tuple[str, dict[str, str | None]]:
    """The checkpoint's tokenizer.json text and its special tokens as it names them.

    A checkpoint with only a WordPiece vocab.txt gets the fast tokenizer transformers builds from it.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(ckpt.tokenizer), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.tokenizer}: the tokenizer does not load ({' '.join(str(e).split())})") from None
    own = ckpt.tokenizer / TOKENIZER_FILE
    if own.is_file():
        text = own.read_text(encoding="utf-8")
    elif getattr(tok, "is_fast", False):
        text = tok.backend_tokenizer.to_str()
    else:
        raise CheckpointError(f"{ckpt.tokenizer}: missing tokenizer.json and no fast tokenizer can be built")
    specials = {name: getattr(tok, name, None) for name in ("cls_token", "sep_token", "mask_token", "pad_token")}
    return text, {k: str(v) if v is not None else None for k, v in specials.items()}


def _encoder_config(ckpt: Checkpoint, tokenizer_text: str, specials: dict[str, str | None],
                    notes: list[str]) -> EncoderConfig:
    """The EncoderConfig that frames texts as the checkpoint's library does."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_text)
    cls, sep, mask, pad = (specials[k] for k in ("cls_token", "sep_token", "mask_token", "pad_token"))
    if cls is None or sep is None:
        raise CheckpointError(f"{ckpt.tokenizer}: the tokenizer names no "
                              f"{'cls_token' if cls is None else 'sep_token'} (tokenizer_config.json)")
    if ckpt.query_expansion and mask is None:
        raise CheckpointError(f"{ckpt.tokenizer}: query expansion pads with the mask token, and the tokenizer has none")
    _check_template(ckpt, tokenizer, cls, sep)
    for name, token in (("query prefix", ckpt.query_prefix), ("document prefix", ckpt.document_prefix)):
        if token and tokenizer.token_to_id(token) is None:
            raise CheckpointError(f"{ckpt.tokenizer}: the {name} {token!r} is not a token of the tokenizer")
    kept = [w for w in ckpt.skiplist_words if tokenizer.token_to_id(w) is not None]
    if len(kept) < len(ckpt.skiplist_words):
        dropped = [w for w in ckpt.skiplist_words if w not in kept]
        notes.append(f"skiplist words that are not tokens, left out: {dropped}")
    limit = min(MAX_POSITIONS, ckpt.max_positions or MAX_POSITIONS)
    lengths = {}
    for name, value in (("query length", ckpt.query_length), ("document length", ckpt.document_length)):
        if value > limit:
            notes.append(f"{name} {value} capped at {limit} (lodestore's longest sequence)")
        lengths[name] = min(value, limit)
    return EncoderConfig(
        query_prefix=ckpt.query_prefix, document_prefix=ckpt.document_prefix,
        cls_token=cls, sep_token=sep, mask_token=mask or pad or sep, pad_token=pad or mask or sep,
        query_length=lengths["query length"], doc_max_length=lengths["document length"],
        mask_query_padding=ckpt.query_expansion,
        attend_to_expansion_tokens=ckpt.attend_to_expansion_tokens if ckpt.query_expansion else True,
        skiplist=tuple(kept), dim=ckpt.dim, projection_inside_model=True, normalize=True,
    )


def _check_template(ckpt: Checkpoint, tokenizer: Any, cls: str, sep: str) -> None:
    """The tokenizer must frame a text as ``cls tokens sep``, the framing lodestore reproduces."""
    bare = tokenizer.encode("a b", add_special_tokens=False).ids
    framed = tokenizer.encode("a b", add_special_tokens=True).ids
    expected = [tokenizer.token_to_id(cls), *bare, tokenizer.token_to_id(sep)]
    if framed != expected:
        raise CheckpointError(f"{ckpt.tokenizer}: the tokenizer frames a text as {framed}, not "
                              f"{cls} tokens {sep} ({expected}); lodestore cannot reproduce its framing")


def _export(module: torch.nn.Module, path: Path) -> None:
    """torch.onnx.export (TorchScript exporter: offline, CPU, no onnxscript) with dynamic batch and length."""
    import torch

    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 5, 6, 3, 0]], dtype=torch.long) % _vocab_size(module)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(module, (ids, mask), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input_ids", "attention_mask"], output_names=["token_vectors"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_vectors": axes})


def _vocab_size(module: torch.nn.Module) -> int:
    return int(module.backbone.get_input_embeddings().num_embeddings)


def _quantize_int8(src: Path, dst: Path) -> None:
    """int8 weights, activations quantized at run time (onnxruntime's dynamic quantization).

    Per-channel weight scales with a 7-bit range: without reduce_range, per-channel int8
    weights saturate the u8s8 products of CPUs without VNNI (on the tiny test models some
    token vectors then fell below the 0.99 cosine tests/text/test_convert.py requires).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantizer_log = logging.getLogger()  # the quantizer advises pre-processing through the root logger
    level = quantizer_log.level
    quantizer_log.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    finally:
        quantizer_log.setLevel(level)


def _check_export(module: torch.nn.Module, folder: Path, floor: float | None) -> float:
    """Run the exported encoder directory on CHECK_TEXTS and compare with the torch forward.

    Returns the smallest cosine over the tokens; below ``floor`` (when given) is an error.
    """
    import torch

    from .encoder import Encoder
    from .framing import pad

    encoder = Encoder.from_dir(folder, intra_op_num_threads=1)
    texts = list(CHECK_TEXTS)
    query_ids, query_mask = encoder.tokenize_queries(texts)
    query_rows = np.ones_like(query_mask, dtype=bool) if encoder.config.mask_query_padding else query_mask == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a check text longer than a short doc_max_length
        doc_ids, doc_mask = pad(encoder.tokenize_documents(texts), encoder.special_ids.pad)
    worst = 1.0
    for ids, mask, rows in ((query_ids, query_mask, query_rows), (doc_ids, doc_mask, doc_mask == 1)):
        exported = encoder._run(ids, mask, release=True)  # projected, normalized: cosines unchanged
        with torch.no_grad():
            reference = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        worst = min(worst, float(_cosines(exported[rows], reference[rows]).min()))
    if floor is not None and worst < floor:
        raise CheckpointError(f"the exported model disagrees with the checkpoint's torch forward "
                              f"(min cosine {worst:.6f} < {floor})")
    return worst


def _fsync_files(folder: Path) -> None:
    """Flush every file of the new directory, and the directory itself, before it is renamed into place."""
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dots = (a * b).sum(-1)
    return dots / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
