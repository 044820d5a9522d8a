"""Text tokenization shared by every BM25 backend, so that backends differ only in scoring.

Pure functions over strings; no index, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache

_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class TokenizerConfig:
    """How texts become tokens: ``lowercase``, ``stopwords`` ("en" or "none"), ``stemmer`` ("english" or "none")."""

    lowercase: bool = True
    stopwords: str = "en"
    stemmer: str = "english"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@lru_cache(maxsize=8)
def _stopwords(name: str) -> frozenset[str]:
    if name in ("none", ""):
        return frozenset()
    if name in ("en", "english"):
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN)
    raise ValueError(f"unknown stopwords list {name!r}; expected 'en' or 'none'")


@lru_cache(maxsize=8)
def _stem_fn(name: str) -> Callable[[str], str] | None:
    if name in ("none", ""):
        return None
    try:
        import Stemmer
    except ImportError as exc:  # pragma: no cover - PyStemmer is a dependency
        raise ImportError("stemming needs PyStemmer: pip install PyStemmer") from exc
    stem = Stemmer.Stemmer(name).stemWord
    return lru_cache(maxsize=1_000_000)(stem)


class Tokenizer:
    """Regex word tokenizer (``\\w\\w+``) with optional lowercasing, stopword removal and Snowball stemming."""

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = config or TokenizerConfig()
        self._stop = _stopwords(self.config.stopwords)
        self._stem = _stem_fn(self.config.stemmer)

    def __call__(self, text: str) -> list[str]:
        if self.config.lowercase:
            text = text.lower()
        toks = [t for t in _TOKEN_RE.findall(text) if t not in self._stop]
        if self._stem is not None:
            toks = [self._stem(t) for t in toks]
        return toks

    def batch(self, texts: Iterable[str]) -> list[list[str]]:
        return [self(t) for t in texts]
