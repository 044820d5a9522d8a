"""Small random-initialised models (BERT backbone, the packaged MiniLM tokenizer) for smoke runs, tests and
memory/throughput benchmarks: they load like any sentence-transformers model or CrossEncoder, run in
milliseconds, and judge nothing. Never use them for real mining."""

from __future__ import annotations

from pathlib import Path


def _config(hidden: int, layers: int, **extra):
    from transformers import AutoTokenizer, BertConfig

    from .encoder import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    heads = max(1, hidden // 16)
    return tok, BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=2 * hidden, **extra)


def build_small_cross_encoder(folder: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A BERT with a one-logit head, random weights (``seed``), saved where ``CrossEncoder(folder)`` loads it.

    ``initializer_range=0.5`` (instead of BERT's 0.02) spreads the logits over several units, so a
    false-negative filter has something to separate: with the default all logits are ~0.0117."""
    import torch
    from transformers import BertForSequenceClassification

    folder = Path(folder)
    tok, config = _config(hidden, layers, num_labels=1, initializer_range=0.5)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_small_bi_encoder(folder: str | Path, hidden: int = 32, layers: int = 2, max_seq_length: int = 64,
                           seed: int = 0) -> Path:
    """A BERT with mean pooling and normalisation, random weights (``seed``), saved as a sentence-transformers
    folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertModel

    folder = Path(folder)
    tok, config = _config(hidden, layers)
    torch.manual_seed(seed)
    raw = folder.parent / f"{folder.name}_backbone"
    BertModel(config).save_pretrained(raw)
    tok.save_pretrained(raw)
    st = SentenceTransformer(modules=[models.Transformer(str(raw), max_seq_length=max_seq_length),
                                      models.Pooling(hidden, "mean"), models.Normalize()], device="cpu")
    st.save(str(folder))
    return folder
