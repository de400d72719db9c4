"""The ONNX model run on the CPU: padded ids in, hidden states out.

onnxruntime is imported when a session is built, never when this module is imported,
so that the query engine and the store stay free of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxModel:
    """A CPU onnxruntime session that hands back its working memory when asked.

    A batch of long documents grows onnxruntime's memory arena to gigabytes, which it
    would keep for the session's life. Runs made with ``release`` shrink the arena at
    their end, and the output is written into a numpy buffer of ours (I/O binding) so
    that it pins no arena region. Other runs keep the arena, which is faster than
    shrinking it after every batch.
    """

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"intra_op_num_threads must be positive, got {threads}")
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = check_inputs({i.name for i in self._session.get_inputs()})
        output = self._session.get_outputs()[0]
        self._output = output.name
        #: Static width of the output vectors, or None when the model leaves it dynamic.
        self.width: int | None = output.shape[-1] if isinstance(output.shape[-1], int) else None
        self._bind_output = self.width is not None and output.type == "tensor(float)"
        self._keep = ort.RunOptions()
        self._release = ort.RunOptions()
        self._release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def __call__(self, ids: np.ndarray, mask: np.ndarray, release: bool) -> np.ndarray:
        """Hidden states (B, S, width) float32 of a padded int64 batch."""
        feed = {"input_ids": np.ascontiguousarray(ids), "attention_mask": np.ascontiguousarray(mask)}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        options = self._release if release else self._keep
        if not self._bind_output:
            return self._session.run([self._output], feed, options)[0].astype(np.float32, copy=False)
        binding = self._session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        out = np.empty((*ids.shape, self.width), dtype=np.float32)
        binding.bind_output(self._output, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self._session.run_with_iobinding(binding, options)
        return out


def check_inputs(names: set[str]) -> set[str]:
    """The model must take input_ids and attention_mask, and nothing we cannot feed."""
    required = {"input_ids", "attention_mask"}
    unknown = names - required - {"token_type_ids"}
    if not required <= names or unknown:
        raise ValueError(f"model inputs {sorted(names)}: need input_ids and attention_mask, optionally token_type_ids")
    return names
