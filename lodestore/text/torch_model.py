"""A ColBERT checkpoint as one torch module: the backbone's token states through its projections.

Used by ``lodestore convert-model`` (:mod:`.convert`) to export ONNX, and as the reference
the exported model is checked against. Imports torch and transformers at import time:
only the converter and its tests import it (``lodestore[convert]``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, CheckpointError, DenseLayer, read_checkpoint


class Projection(nn.Module):
    """A PyLate / sentence-transformers Dense module: activation(linear(x)), plus a residual if asked."""

    def __init__(self, layer: DenseLayer, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        self.linear.load_state_dict({k: v for k, v in state.items() if k in ("weight", "bias")})
        self.activation = getattr(nn, layer.activation)()
        self.use_residual = layer.use_residual
        self.residual: nn.Linear | None = None
        if layer.use_residual and layer.in_features != layer.out_features:
            if "residual.weight" not in state:
                raise CheckpointError(f"{layer.weights}: missing residual.weight")
            self.residual = nn.Linear(layer.in_features, layer.out_features, bias=False)
            self.residual.load_state_dict({"weight": state["residual.weight"]})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.activation(self.linear(x))
        if self.use_residual:
            y = y + (self.residual(x) if self.residual is not None else x)
        return y


class ColbertModule(nn.Module):
    """(input_ids, attention_mask) -> unnormalized token vectors (B, S, dim).

    token_type_ids, where the backbone takes them, are zeros computed inside the graph, so
    the exported model has exactly two inputs whatever the architecture.
    """

    def __init__(self, backbone: nn.Module, projections: list[Projection]) -> None:
        super().__init__()
        self.backbone = backbone
        self.projections = nn.ModuleList(projections)
        self.token_types = "token_type_ids" in inspect.signature(backbone.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.token_types else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
        for projection in self.projections:
            hidden = projection(hidden)
        return hidden


def load_torch_model(ckpt: Checkpoint | str | Path) -> ColbertModule:
    """The checkpoint as a float32 ColbertModule in eval mode (local files only, never a download)."""
    from transformers import AutoModel

    if not isinstance(ckpt, Checkpoint):
        ckpt = read_checkpoint(ckpt)
    try:
        backbone, info = AutoModel.from_pretrained(str(ckpt.backbone), local_files_only=True,
                                                   output_loading_info=True, attn_implementation="eager")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt.backbone}: the backbone does not load ({' '.join(str(e).split())})") from None
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")]
    if missing:
        raise CheckpointError(f"{ckpt.backbone}: the weights lack {len(missing)} backbone tensor(s), "
                              f"e.g. {', '.join(sorted(missing)[:3])}")
    projections = [Projection(layer, dense_state(layer)) for layer in ckpt.dense]
    return ColbertModule(backbone, projections).float().eval()


def dense_state(layer: DenseLayer) -> dict[str, torch.Tensor]:
    """A projection's tensors ("weight", "bias", "residual.weight") from its weights file."""
    state = load_weights(layer.weights, lambda k: k.startswith((layer.prefix, "residual.")))
    found = {k.removeprefix(layer.prefix): v for k, v in state.items()}
    need = {"weight", *(["bias"] if layer.bias else [])}
    if not need <= set(found):
        raise CheckpointError(f"{layer.weights}: missing {', '.join(sorted(layer.prefix + k for k in need - set(found)))}")
    if tuple(found["weight"].shape) != (layer.out_features, layer.in_features):
        raise CheckpointError(f"{layer.weights}: {layer.prefix}weight is {list(found['weight'].shape)}, "
                              f"expected [{layer.out_features}, {layer.in_features}]")
    return found


def load_weights(path: Path, wanted: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors whose keys pass ``wanted`` from safetensors, a torch .bin (weights only) or a sharded index."""
    from safetensors.torch import load_file

    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text(encoding="utf-8"))
        state: dict[str, torch.Tensor] = {}
        for shard in sorted({f for k, f in index.get("weight_map", {}).items() if wanted(k)}):
            state.update(load_weights(path.parent / shard, wanted))
        return state
    if path.suffix == ".safetensors":
        full = load_file(str(path))
    else:
        full = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in full.items() if wanted(k)}
