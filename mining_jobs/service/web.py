"""The job service's web page: server-rendered HTML with a little JavaScript, no build step.

- ``/``: every job with its kind, state, stage and a live progress bar, and a form to cancel one;
- ``/ui/jobs/<id>``: the job's report rendered, with its plots, and its files to download;
- ``/ui/jobs/<id>/inspect``: the candidate inspector of a mining run: pick a query and see its positives, the
  kept negatives, the filtered candidates and the relabelled ones side by side, each with its text, sources,
  ranks, judge score against the positive's, and fate; sort and filter by fate.

The same bearer-token rule as the API: with a token, a page needs ``Authorization: Bearer <token>`` or the
``hardneg_token`` cookie that the login form sets. Bad input gets a 4xx page with a readable message."""

from __future__ import annotations

import hmac
import html
import json
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from .store import Job, JobStore, JobStoreError

COOKIE = "hardneg_token"
ENDED = ("succeeded", "failed", "cancelled")
FATE_GROUPS = {"kept": "kept negatives", "filtered": "filtered candidates", "relabelled": "relabelled",
               "other": "not sampled / excluded"}
MAX_OPTIONS = 2000  # queries listed in the inspector's picker
SORTS = {"score": "judge score (high first)", "bm25": "BM25 rank", "dense": "dense rank", "fate": "fate"}

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1400px}
a{color:#0645ad}table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}progress{width:10rem}.state-succeeded{color:#187a2f}
.state-failed{color:#b00020}.state-cancelled{color:#777}.state-running{color:#0b57d0}.err{color:#b00020}
.panels{display:grid;grid-template-columns:repeat(4,1fr);gap:.8rem}.panel{border:1px solid #ccc;padding:.5rem;
border-radius:6px;min-width:0}.panel h3{margin:.2rem 0 .5rem}.cand{border-top:1px solid #eee;padding:.35rem 0;
font-size:.9rem}.cand .meta{color:#555;font-size:.8rem}.fate{font-weight:600}.report img{max-width:100%}
.report table{font-size:.9rem}code{background:#f6f6f6;padding:0 .2rem}pre{background:#f6f6f6;padding:.5rem;
overflow:auto}
"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)} - hardneg</title>"
           f"<style>{CSS}</style></head><body><p><a href='/'>hardneg jobs</a></p>{body}</body></html>")
    return HTMLResponse(doc, status_code=status)


def error_page(status: int, message: str) -> HTMLResponse:
    return page(f"{status}", f"<h1>{status}</h1><p class='err' id='error'>{html.escape(message, quote=False)}</p>",
                status)


def login_page(message: str = "This service needs a token.") -> HTMLResponse:
    body = (f"<h1>401: sign in</h1><p class='err' id='error'>{html.escape(message)}</p>"
            "<form method='post' action='/ui/login'><label>token <input type='password' name='token' "
            "id='token'></label> <button type='submit' id='signin'>sign in</button></form>")
    return page("sign in", body, 401)


# ---------------------------------------------------------------------------------------------- markdown


def render_markdown(text: str, link) -> str:
    """The subset of Markdown the reports use (headings, paragraphs, lists, tables, code, emphasis, links,
    images), every text escaped. ``link(target)`` maps a relative link or image to a URL."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0

    def url(escaped: str) -> str | None:
        """A link target as a safe attribute value: relative ones through ``link``, http(s) and mailto as
        they are; anything else (javascript:, data:, ...) is not linked."""
        target = html.unescape(escaped)
        if re.match(r"^(https?:|mailto:)", target, flags=re.I):
            return html.escape(target)
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith(("/", "\\")):
            return None
        return html.escape(link(target))

    def image(m: re.Match) -> str:
        u = url(m.group(2))
        return f"<img alt='{m.group(1)}' src='{u}'>" if u else m.group(0)

    def anchor(m: re.Match) -> str:
        u = url(m.group(2))
        return f"<a href='{u}'>{m.group(1)}</a>" if u else m.group(0)

    def inline(s: str) -> str:
        s = html.escape(s)  # quotes too: text never leaves a single-quoted attribute
        s = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", image, s)
        s = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", anchor, s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
        return s

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)", line)
        if m:
            n = len(m.group(1))
            out.append(f"<h{n}>{inline(m.group(2))}</h{n}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            if rows:
                head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
                body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            continue
        elif re.match(r"^\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                item = re.sub(r"^\s*[-*]\s+", "", lines[i])
                items.append(f"<li>{inline(item)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            para = [line]
            while i + 1 < len(lines) and lines[i + 1].strip() and not re.match(r"^(#|\||```|\s*[-*]\s)", lines[i + 1]):
                i += 1
                para.append(lines[i])
            out.append(f"<p>{inline(' '.join(para))}</p>")
        i += 1
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- data


def _run_folders(job: Job) -> list[str]:
    """The mining run folders inside a job's run folder (a mine job: itself; an ANCE loop: each round's)."""
    root = Path(job.run_dir)
    found = []
    if (root / "candidates.parquet").is_file():
        found.append("")
    found += sorted(str(p.parent.relative_to(root)) for p in root.glob("round_*/mine/candidates.parquet"))
    return found


@lru_cache(maxsize=2)
def _corpus(folder: str, mtime: float):  # noqa: ARG001 - mtime invalidates the cache
    """The corpus (Arrow-backed) and its id -> row index; two corpora at most are kept."""
    from retriever.data import column, read_corpus

    corpus, _ = read_corpus(Path(folder) / "corpus.jsonl")
    return corpus, {str(d): i for i, d in enumerate(column(corpus, "_id"))}


def _texts_for(manifest: dict[str, Any], doc_ids: list[str]) -> dict[str, str]:
    """The texts of ``doc_ids`` from the run's corpus; empty when it cannot be read (a hub id, a moved or
    malformed collection): the inspector then shows ids without texts."""
    from retriever.data import join_title_text, resolve_data

    try:
        where = resolve_data(manifest["config"]["data"]["name"])
        if not isinstance(where, Path) or not (where / "corpus.jsonl").is_file():
            return {}
        corpus, index = _corpus(str(where), (where / "corpus.jsonl").stat().st_mtime)
        rows = sorted({index[d] for d in doc_ids if d in index})
        sel = corpus.data.table.take(rows).to_pylist() if rows else []
    except Exception:  # noqa: BLE001 - the page shows what it can instead of failing
        return {}
    return {str(r["_id"]): join_title_text(r.get("title") or "", r.get("text") or "") for r in sel}


def _group(fate: str) -> str:
    if fate in ("kept", "relabelled"):
        return fate
    if fate.startswith("filtered:"):
        return "filtered"
    return "other"


def _sigmoid(x: float) -> float:
    import math

    return 1.0 / (1.0 + math.exp(-x)) if x > -60 else 0.0


# ---------------------------------------------------------------------------------------------- routes


def add_web_routes(app: FastAPI, store: JobStore, token: str | None) -> None:
    """Mount the web page on ``app`` (left out of the OpenAPI schema: it is for people, not clients)."""

    def allowed(request: Request) -> bool:
        if token is None:
            return True
        given = request.cookies.get(COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def guard(request: Request) -> HTMLResponse | None:
        return None if allowed(request) else login_page()

    def find(job_id: str) -> Job | None:
        try:
            return store.get(job_id)
        except (JobStoreError, ValueError):
            return None

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def jobs_page(request: Request):
        if (r := guard(request)) is not None:
            return r
        rows = []
        for j in store.list(limit=200):
            d = j.to_dict()
            p = d["progress"]
            bar = (f"<progress value='{p['done']}' max='{p['total']}'></progress> {p['done']}/{p['total']}"
                   if p.get("total") else "<progress></progress>" if d["state"] == "running" else "")
            cancel = ("" if d["state"] in ENDED else
                      f"<form method='post' action='/ui/jobs/{quote(j.id)}/cancel'><button type='submit' "
                      f"class='cancel'>cancel</button></form>")
            rows.append(f"<tr id='job-{html.escape(j.id)}' data-id='{html.escape(j.id)}'>"
                        f"<td><a href='/ui/jobs/{quote(j.id)}'>{html.escape(j.id)}</a></td>"
                        f"<td>{html.escape(d['kind'])}</td><td>{html.escape(d['name'])}</td>"
                        f"<td class='state state-{d['state']}'>{d['state']}</td>"
                        f"<td class='stage'>{html.escape(d['stage'] or '')}</td><td class='progress'>{bar}</td>"
                        f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d['created_at']))}</td>"
                        f"<td>{cancel}</td></tr>")
        table = ("<table id='jobs'><tr><th>job</th><th>kind</th><th>name</th><th>state</th><th>stage</th>"
                 "<th>progress</th><th>submitted</th><th></th></tr>" + "".join(rows) + "</table>") if rows else \
            "<p id='no-jobs'>No jobs yet: <code>hardneg submit mine --config examples/mine.toml</code></p>"
        script = """<script>
async function refresh(){
  try{
    const r = await fetch('/ui/jobs.json', {credentials:'same-origin'}); if(!r.ok) return;
    const jobs = await r.json(); let stale = false;
    for(const j of jobs){
      const row = document.getElementById('job-' + j.id); if(!row){ stale = true; continue; }
      const st = row.querySelector('.state'); st.textContent = j.state; st.className = 'state state-' + j.state;
      row.querySelector('.stage').textContent = j.stage || '';
      const p = j.progress || {}; const cell = row.querySelector('.progress');
      if(p.total){ cell.innerHTML = '<progress value="'+p.done+'" max="'+p.total+'"></progress> '+p.done+'/'+p.total; }
      if(['succeeded','failed','cancelled'].includes(j.state)){ const f = row.querySelector('form'); if(f) f.remove(); }
    }
    if(stale) location.reload();
  }catch(e){}
}
setInterval(refresh, 1500);
</script>"""
        return page("jobs", f"<h1>Jobs</h1>{table}{script}")

    @app.get("/ui/jobs.json", include_in_schema=False)
    def jobs_json(request: Request):
        if not allowed(request):
            return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)
        return [j.to_dict() for j in store.list(limit=200)]

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request):
        from urllib.parse import parse_qs

        body = (await request.body())[:4096].decode(errors="replace")
        token_value = (parse_qs(body).get("token") or [""])[0]
        if token is not None and not (token_value and hmac.compare_digest(token_value.encode(), token.encode())):
            return login_page("Wrong token.")
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, token_value, httponly=True, samesite="strict")
        return resp

    @app.post("/ui/jobs/{job_id}/cancel", include_in_schema=False)
    def cancel(job_id: str, request: Request):
        if (r := guard(request)) is not None:
            return r
        if find(job_id) is None:
            return error_page(404, f"No job {job_id!r}.")
        try:
            store.cancel(job_id)
        except JobStoreError as exc:
            return error_page(409, str(exc))
        return RedirectResponse("/", status_code=303)

    @app.get("/ui/jobs/{job_id}", include_in_schema=False, response_class=HTMLResponse)
    def job_page(job_id: str, request: Request):
        if (r := guard(request)) is not None:
            return r
        job = find(job_id)
        if job is None:
            return error_page(404, f"No job {job_id!r}.")
        d = job.to_dict()
        root = Path(job.run_dir)
        files_url = f"/ui/jobs/{quote(job.id)}/files/"
        parts = [f"<h1>Job {html.escape(job.id)}</h1>",
                 f"<p>{html.escape(d['kind'])} &middot; <span class='state state-{d['state']}' id='state'>"
                 f"{d['state']}</span> &middot; stage {html.escape(d['stage'] or '-')}"
                 f"{' &middot; ' + html.escape(d['name']) if d['name'] else ''}</p>"]
        if d.get("error"):
            parts.append(f"<pre class='err'>{html.escape(d['error'])}</pre>")
        runs = _run_folders(job)
        if runs:
            links = " ".join(f"<a class='inspect' href='/ui/jobs/{quote(job.id)}/inspect?"
                             f"{urlencode({'run': r})}'>{html.escape(r or 'candidates')}</a>" for r in runs)
            parts.append(f"<p>Candidate inspector: {links}</p>")
        report = root / "report.md"
        if report.is_file():
            def link(target: str) -> str:  # a file of the run folder
                return files_url + quote(target)

            parts.append("<div class='report' id='report'>" + render_markdown(report.read_text(errors="replace"),
                                                                              link) + "</div>")
        elif d.get("metrics"):
            parts.append("<h2>Result</h2><pre id='report'>" + html.escape(json.dumps(d["metrics"], indent=2))
                         + "</pre>")
        files = []
        try:
            paths = sorted(root.rglob("*")) if root.is_dir() else []
        except OSError:  # a folder removed while listing (a running job rotates checkpoints)
            paths = []
        for p in paths:
            try:
                if p.is_file() and not p.is_symlink() and "checkpoints" not in p.parts and ".tmp" not in p.name:
                    rel = p.relative_to(root).as_posix()
                    files.append(f"<li><a href='{files_url}{quote(rel)}'>{html.escape(rel)}</a> "
                                 f"({p.stat().st_size:,} bytes)</li>")
            except OSError:
                continue
        parts.append("<h2>Files</h2>" + ("<ul id='files'>" + "".join(files[:300]) + "</ul>" if files
                                        else "<p>none yet</p>"))
        return page(f"job {job.id}", "".join(parts))

    @app.get("/ui/jobs/{job_id}/files/{name:path}", include_in_schema=False)
    def job_file(job_id: str, name: str, request: Request):
        if (r := guard(request)) is not None:
            return r
        job = find(job_id)
        if job is None:
            return error_page(404, f"No job {job_id!r}.")
        try:
            if "\x00" in name or len(name) > 1024 or ".." in Path(name).parts:
                raise ValueError(name)
            root = Path(job.run_dir).resolve()
            target = (root / name).resolve()
            if not target.is_relative_to(root) or not target.is_file():
                raise ValueError(name)
        except (OSError, ValueError):
            return error_page(404, f"Job {job_id} has no file {name[:200]!r}.")
        return FileResponse(target, filename=target.name)

    @app.get("/ui/jobs/{job_id}/inspect", include_in_schema=False, response_class=HTMLResponse)
    def inspect(job_id: str, request: Request, run: str = "", query: str = "", fate: str = "all",
                sort: str = "score"):
        if (r := guard(request)) is not None:
            return r
        job = find(job_id)
        if job is None:
            return error_page(404, f"No job {job_id!r}.")
        runs = _run_folders(job)
        if run not in runs:
            return error_page(404, f"Job {job_id} has no mining run {run!r} with candidates"
                              + (f" (it has: {', '.join(r or '.' for r in runs)})" if runs else
                                 " (it is not a finished mining job)") + ".")
        if fate not in ("all", *FATE_GROUPS):
            return error_page(400, f"fate {fate!r}: expected one of all, {', '.join(FATE_GROUPS)}.")
        if sort not in SORTS:
            return error_page(400, f"sort {sort!r}: expected one of {', '.join(SORTS)}.")
        return _inspector(job, run, query, fate, sort)


def _inspector(job: Job, run: str, query: str, fate: str, sort: str) -> HTMLResponse:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = Path(job.run_dir) / run
    triples = pq.read_table(folder / "triples.parquet",
                            columns=["query_id", "query", "positive_id", "positive", "positive_score",
                                     "positive_source"]).to_pylist()
    queries: dict[str, str] = {}
    for t in triples:
        queries.setdefault(t["query_id"], t["query"])
    base = f"/ui/jobs/{quote(job.id)}/inspect"
    if not query:
        query = next(iter(queries), "")
    if query not in queries:
        return error_page(404, f"Job {job.id} has no query {query!r} in {run or 'its run folder'}.")
    manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").is_file() else {}
    cands = pq.read_table(folder / "candidates.parquet")
    cands = cands.filter(pc.equal(cands["query_id"], query)).to_pylist()
    texts = _texts_for(manifest, [c["doc_id"] for c in cands]) if manifest else {}
    positives = [t for t in triples if t["query_id"] == query]
    key = {"score": lambda c: -(c["ce_score"] if c["ce_score"] is not None else float("-inf")),
           "bm25": lambda c: c["bm25_rank"] if c["bm25_rank"] is not None else 10**9,
           "dense": lambda c: c["dense_rank"] if c["dense_rank"] is not None else 10**9,
           "fate": lambda c: c["fate"]}[sort]
    cands.sort(key=key)

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def cand_html(c: dict) -> str:
        text = texts.get(c["doc_id"], "")
        pos = c.get("positive_score")
        judge = (f"judge {fmt(c['ce_score'])} vs positive {fmt(pos)}"
                 + (f" (p {_sigmoid(c['ce_score']):.2f} vs {_sigmoid(pos):.2f})"
                    if c["ce_score"] is not None and pos is not None else ""))
        return (f"<div class='cand' data-doc='{html.escape(c['doc_id'])}' data-fate='{html.escape(c['fate'])}'>"
                f"<div>{html.escape(text[:400]) or '<i>(text not available)</i>'}"
                f"{'&hellip;' if len(text) > 400 else ''}</div>"
                f"<div class='meta'>doc {html.escape(c['doc_id'])} &middot; sources "
                f"{html.escape(', '.join(c['sources'] or []))} &middot; BM25 rank {c['bm25_rank'] or '-'} &middot; "
                f"dense rank {c['dense_rank'] or '-'} &middot; <span class='score'>{judge}</span> &middot; "
                f"<span class='fate'>{html.escape(c['fate'])}</span></div></div>")

    pos_html = "".join(
        f"<div class='cand positive' data-doc='{html.escape(p['positive_id'])}'><div>{html.escape(p['positive'][:400])}"
        f"</div><div class='meta'>doc {html.escape(p['positive_id'])} &middot; {html.escape(p['positive_source'])}"
        f" &middot; <span class='score'>judge {fmt(p['positive_score'])}</span></div></div>" for p in positives)
    panels = [f"<div class='panel' id='panel-positives'><h3>positives ({len(positives)})</h3>{pos_html}</div>"]
    for g, title in FATE_GROUPS.items():
        if fate not in ("all", g):
            continue
        mine = [c for c in cands if _group(c["fate"]) == g]
        panels.append(f"<div class='panel' id='panel-{g}'><h3>{title} ({len(mine)})</h3>"
                      + ("".join(cand_html(c) for c in mine) or "<p>none</p>") + "</div>")
    shown = [q for i, q in enumerate(queries) if i < MAX_OPTIONS or q == query]
    options = "".join(f"<option value='{html.escape(q)}'{' selected' if q == query else ''}>{html.escape(q)}: "
                      f"{html.escape(queries[q][:90])}</option>" for q in shown)
    more = (f" <small>(the first {MAX_OPTIONS:,} of {len(queries):,} queries; open another with "
            "<code>?query=ID</code>)</small>" if len(queries) > MAX_OPTIONS else "")
    sel = "".join(f"<option value='{k}'{' selected' if k == sort else ''}>{v}</option>" for k, v in SORTS.items())
    fsel = "".join(f"<option value='{k}'{' selected' if k == fate else ''}>{k}</option>"
                   for k in ("all", *FATE_GROUPS))
    form = (f"<form method='get' action='{base}' id='pick'><input type='hidden' name='run' value='{html.escape(run)}'>"
            f"<label>query <select name='query' id='query' onchange='this.form.submit()'>{options}</select></label> "
            f"<label>fate <select name='fate' id='fate' onchange='this.form.submit()'>{fsel}</select></label> "
            f"<label>sort by <select name='sort' id='sort' onchange='this.form.submit()'>{sel}</select></label> "
            f"<noscript><button type='submit'>show</button></noscript>{more}</form>")
    head = (f"<h1>Candidates of job <a href='/ui/jobs/{quote(job.id)}'>{html.escape(job.id)}</a>"
            f"{' / ' + html.escape(run) if run else ''}</h1>{form}"
            f"<h2 id='query-text'>{html.escape(query)}: {html.escape(queries[query])}</h2>")
    return page(f"inspect {job.id}", head + "<div class='panels'>" + "".join(panels) + "</div>")
