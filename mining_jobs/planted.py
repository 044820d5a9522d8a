"""Known false negatives planted in a collection (``planted.json`` next to ``corpus.jsonl``, as written by
``benchmarks/bench_planted.py``): how many the job retrieved, removed before sampling (excluded, filtered by
the judge, relabelled) or trained on as negatives, and what the judge cost on the other candidates.
Computed once from the merged ``candidates.parquet`` and ``triples.parquet``, so a resumed job gets the same
numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from retriever.data import resolve_data
from retriever.errors import DataError

PLANTED_FILE = "planted.json"
EXCLUDED = ("positive", "duplicate", "self", "eval_positive")
Planted = dict[str, set[tuple[str, str]]]


def judged_out(fate: str) -> bool:
    """Removed by the judge's scores (score rules, positive-aware sampling or relabelling); the rank window
    and lazy scoring are not the judge."""
    return fate == "relabelled" or (fate.startswith("filtered:") and fate != "filtered:rank_window")


def find_planted(name: str) -> Path | None:
    """``planted.json`` of the local collection ``data.name`` resolves to, if any (hub datasets have none;
    a name that does not resolve is left to the job's own loading to report)."""
    try:
        resolved = resolve_data(name)
    except DataError:
        return None
    if not isinstance(resolved, Path) or not (resolved / PLANTED_FILE).is_file():
        return None
    return resolved / PLANTED_FILE


def load_planted(path: Path) -> Planted:
    """``{kind: [[query_id, doc_id], ...]}`` as sets of pairs (ids as strings).

    Raises:
        DataError: not JSON, or not that shape; the message names the file, the kind and the entry.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); expected {{kind: [[query_id, doc_id], ...]}}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object {{kind: [[query_id, doc_id], ...]}}, got {type(raw).__name__}")
    out: Planted = {}
    for kind, pairs in raw.items():
        if not isinstance(pairs, list):
            raise DataError(f"{path}: kind {kind!r}: expected a list of [query_id, doc_id] pairs, "
                            f"got {type(pairs).__name__}")
        out[kind] = set()
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(x, str | int) and not isinstance(x, bool) for x in pair)):
                raise DataError(f"{path}: kind {kind!r}, entry {i}: expected [query_id, doc_id], got {pair!r}")
            out[kind].add((str(pair[0]), str(pair[1])))
    return out


def _share(a: int, b: int) -> float | None:
    return a / b if b else None


def planted_stats(planted: Planted, path: Path, queries: set[str], cands: pa.Table, triples: pa.Table) -> dict:
    """Per kind and over all planted pairs of the mined ``queries``: planted, retrieved (among the candidates),
    excluded, filtered (by the judge's score rules), relabelled, removed (the three), in_negatives (sampled,
    from the triples), missed_not_sampled (retrieved, neither removed nor sampled), recall (removed /
    retrieved) and fates. ``cost``: the share of the other scored candidates the judge removed;
    ``negatives``: the share of sampled (query, negative) pairs that are planted. ``cands``: the retrieved
    candidates (documents drawn at random by ``sampling.fill`` are left out by the caller: they would count as
    retrieved and their easy scores would lower the cost); ``triples``: every sampled negative."""
    kinds = {k: {p for p in v if p[0] in queries} for k, v in planted.items()}
    every = set().union(*kinds.values()) if kinds else set()
    fate_of: dict[tuple[str, str], str] = {}
    other_scored = other_judged = 0
    for q, d, ce, f in zip(cands["query_id"].to_pylist(), cands["doc_id"].to_pylist(),
                           cands["ce_score"].to_pylist(), cands["fate"].to_pylist(), strict=True):
        if (q, d) in every:
            fate_of[(q, d)] = f
        elif ce is not None:
            other_scored += 1
            other_judged += judged_out(f)
    sampled = {(q, d) for q, negs in zip(triples["query_id"].to_pylist(), triples["negative_ids"].to_pylist(),
                                         strict=True) for d in negs}

    def count(pairs: set[tuple[str, str]]) -> dict:
        fates = [fate_of[p] for p in sorted(pairs) if p in fate_of]
        excluded = sum(f in EXCLUDED for f in fates)
        filtered = sum(judged_out(f) and f != "relabelled" for f in fates)
        relabelled = fates.count("relabelled")
        removed = excluded + filtered + relabelled
        in_neg = len(pairs & sampled)  # also those drawn at random by sampling.fill (not in ``cands``)
        sampled_retrieved = len(pairs & sampled & fate_of.keys())
        return {"planted": len(pairs), "retrieved": len(fates), "excluded": excluded, "filtered": filtered,
                "relabelled": relabelled, "removed": removed, "in_negatives": in_neg,
                "missed_not_sampled": len(fates) - removed - sampled_retrieved, "recall": _share(removed, len(fates)),
                "fates": {f: fates.count(f) for f in sorted(set(fates))}}

    return {"file": str(path), "kinds": {k: count(v) for k, v in kinds.items()}, "all": count(every),
            "cost": {"other_scored": other_scored, "other_filtered": other_judged,
                     "share": _share(other_judged, other_scored)},
            "negatives": {"sampled": len(sampled), "planted": len(every & sampled),
                          "share": _share(len(every & sampled), len(sampled))}}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def render_planted(p: dict | None) -> list[str]:
    """The report's section on planted false negatives (nothing without ``planted.json``)."""
    if not p:
        return []
    a, c, n = p["all"], p["cost"], p["negatives"]
    cost = (f"the judge removed {c['other_filtered']} of {c['other_scored']} other scored candidates "
            f"({_pct(c['share'])})" if c["other_scored"] else "no other candidate was scored (no judge)")
    lines = ["## Planted false negatives", "",
             f"Known false negatives from `{p['file']}`, for the queries mined ({a['planted']} pairs).", "",
             f"- **Planted false negatives: caught {a['removed']} of {a['retrieved']} retrieved "
             f"({_pct(a['recall'])})** before sampling; {a['in_negatives']} ended up as sampled negatives "
             f"({n['planted']} of {n['sampled']} sampled (query, negative) pairs, {_pct(n['share'])})",
             f"- cost: {cost}", "",
             "| kind | planted | retrieved | excluded | filtered by judge | relabelled | caught (recall) | "
             "in negatives | not sampled |", "|---|---|---|---|---|---|---|---|---|"]
    for kind, s in [*p["kinds"].items(), ("all", a)]:
        lines.append(f"| {kind} | {s['planted']} | {s['retrieved']} | {s['excluded']} | {s['filtered']} | "
                     f"{s['relabelled']} | {s['removed']} ({_pct(s['recall'])}) | {s['in_negatives']} | "
                     f"{s['missed_not_sampled']} |")
    return [*lines, ""]
