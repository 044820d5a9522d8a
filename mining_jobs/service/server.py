"""``hardneg serve``: the job service's HTTP API (FastAPI). Submitting validates and stores a job; workers
(``hardneg worker``) run it. Binds 127.0.0.1 by default; any other address needs a bearer token. Artifact
names are confined to the job's run folder; paths in a submitted config to the allowed roots (``--data-root``,
see ``kinds.check_paths``). Runs no job itself. Needs the ``service`` extra."""

from __future__ import annotations

import hmac
import ipaddress
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

try:
    from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.routing import Match
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the job service needs FastAPI and uvicorn: pip install 'hardneg[service]'") from exc

from retriever.errors import HardnegError

from .. import __version__
from ..config import ConfigError
from . import kinds
from .store import STATES, Job, JobStore, JobStoreError, service_roots

KINDS = kinds.NAMES
KindName = Literal[KINDS]  # type: ignore[valid-type]
StateName = Literal[STATES]  # type: ignore[valid-type]

def kind_schema_name(kind: str) -> str:
    """``train-reranker`` -> ``TrainRerankerJobConfig`` (the OpenAPI component of its config)."""
    return "".join(p.capitalize() for p in kind.split("-")) + "JobConfig"


TOKEN_ENV = "HARDNEG_TOKEN"
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
JOB_REF_PREFIX = "job:"


class ServiceError(HardnegError):
    """The service cannot start as asked (e.g. a public bind without a token)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | os.PathLike | None = None) -> str | None:
    """The bearer token: from ``token_file`` when given, else ``$HARDNEG_TOKEN``; ``None`` when neither."""
    if token_file:
        p = Path(token_file)
        if not p.is_file():
            raise ServiceError(f"--token-file {p}: no such file")
        token = p.read_text().strip()
        if not token:
            raise ServiceError(f"--token-file {p}: the file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


MAX_DEPTH = 16


def check_plain(value: Any, where: str = "", depth: int = 0) -> None:
    """A config holds tables, lists, strings, numbers, booleans and nulls only, at most ``MAX_DEPTH`` deep
    (TOML dates and times, say, are refused with the field they are in)."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where or 'config'}: nested more than {MAX_DEPTH} levels deep", where or None)
    if isinstance(value, dict):
        for k, v in value.items():
            check_plain(v, f"{where}.{k}" if where else str(k), depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_plain(v, where, depth + 1)
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise ConfigError(f"{where}: {type(value).__name__} values are not accepted in a job config", where or None)


def resolve_job_refs(value: Any, store: JobStore, where: str = "") -> Any:
    """Replace ``"job:<id>"`` (or ``"job:<id>/sub/path"``) strings anywhere in a config by that job's run
    folder (or a path inside it), so one job can use another's triples or models. The job must have
    succeeded."""
    if isinstance(value, dict):
        return {k: resolve_job_refs(v, store, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_job_refs(v, store, where) for v in value]
    if isinstance(value, str) and value.startswith(JOB_REF_PREFIX):
        ref, _, sub = value[len(JOB_REF_PREFIX):].partition("/")
        job = store.get(ref)
        if job is None:
            raise ConfigError(f"{where}: {value!r} names no job", where)
        if job.state != "succeeded":
            raise ConfigError(f"{where}: job {ref} is {job.state}; submit this job after it has succeeded", where)
        root = Path(job.run_dir).resolve()
        target = (root / sub).resolve() if sub else root
        if not target.is_relative_to(root) or not target.exists():
            raise ConfigError(f"{where}: {value!r}: no such path in job {ref}'s run folder", where)
        return str(target)
    return value


class JobRequest(BaseModel):
    kind: KindName = Field(
        description="what to run: " + "; ".join(f"{k.name}: {k.doc}" for k in kinds.KINDS.values()))
    config: dict[str, Any] | None = Field(default=None, description="the job config as JSON (the TOML "
                                          "file's tables as objects), one of the schemas "
                                          + ", ".join(kind_schema_name(k) for k in KINDS) + " for its kind; "
                                          "strings 'job:<id>[/path]' name another job's run folder")
    config_toml: str | None = Field(default=None, description="the job config as TOML text (instead of "
                                                              "config)")
    name: str = Field(default="", max_length=200, description="a label for people")


class Progress(BaseModel):
    done: int | None = None
    total: int | None = None


class Timings(BaseModel):
    queued_s: float
    running_s: float | None


class JobView(BaseModel):
    id: str
    kind: str
    name: str
    state: StateName
    stage: str
    progress: Progress
    config: dict[str, Any]
    run_dir: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    lease_until: float | None
    worker: str | None
    attempts: int
    cancel_requested: bool
    error: str | None
    metrics: dict[str, Any] | None
    timings: Timings

class Artifact(BaseModel):
    name: str
    bytes: int

class Message(BaseModel):
    detail: str


def create_app(store: JobStore, token: str | None = None, data_roots: Iterable[str | os.PathLike] | None = None):
    """The FastAPI application over ``store``; with ``token`` every /jobs request needs
    ``Authorization: Bearer <token>``. A submitted config may name paths only inside ``data_roots`` (``None``:
    ``$HARDNEG_DATA`` and ``$HARDNEG_HOME``) or the store's run folders; others get 422 naming the field."""
    bearer = HTTPBearer(auto_error=False)
    roots = service_roots(store, data_roots)

    def authorize(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        # attached to the routes only when a token is set (see deps below)
        if creds is None or token is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="hardneg job service", version=__version__,
                  description="Submit mining, training and evaluation jobs; workers (`hardneg worker`) run them.")
    deps = [Depends(authorize)] if token else []  # the spec declares bearer auth only when it is required
    r401 = {401: {"model": Message, "description": "missing or wrong bearer token"}} if token else {}
    r404 = {404: {"model": Message, "description": "no job with this id"}}

    def get_job(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    def config_error(exc: ConfigError, prefix: str) -> JSONResponse:
        field = kinds.field_of(exc)
        loc = ["body", prefix, *(field.split(".") if field else [])]
        return JSONResponse(status_code=422, content={"detail": [{"loc": loc, "msg": str(exc), "type": "config"}]})

    @app.get("/health", summary="liveness", responses={200: {"description": "the service answers"}})
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.post("/jobs", status_code=201, response_model=JobView, dependencies=deps,
              summary="submit a job",
              responses={**r401, 400: {"model": Message, "description": "the body is not JSON"}})
    def submit(req: JobRequest) -> Any:
        if req.config is not None and req.config_toml is not None:
            return config_error(ConfigError("give config or config_toml, not both", None), "config_toml")
        raw: Any = req.config or {}
        where = "config"
        if req.config_toml is not None:
            where = "config_toml"
            try:
                raw = tomllib.loads(req.config_toml)
            except tomllib.TOMLDecodeError as exc:
                return config_error(ConfigError(f"invalid TOML: {exc}", None), where)
            except RecursionError:
                return config_error(ConfigError(f"nested more than {MAX_DEPTH} levels deep", None), where)
        try:
            check_plain(raw)
            raw = resolve_job_refs(raw, store)
            kinds.check_paths(req.kind, raw, roots)  # before resolving: validation reads the files it names
            resolved = kinds.resolve(req.kind, raw)
            kinds.check_paths(req.kind, resolved, roots)  # and what resolving filled in
        except ConfigError as exc:
            return config_error(exc, where)
        return store.create(req.kind, resolved, name=req.name).to_dict()

    @app.get("/jobs", response_model=list[JobView], dependencies=deps, summary="list jobs, newest first",
             responses={**r401})
    def list_jobs(state: StateName | None = None, kind: KindName | None = None,
                  limit: int = Query(100, ge=1, le=1000)) -> Any:
        return [j.to_dict() for j in store.list(state=state, kind=kind, limit=limit)]

    @app.get("/jobs/{job_id}", response_model=JobView, dependencies=deps, summary="one job: state, stage, "
             "progress, metrics", responses={**r401, **r404})
    def show(job_id: str = PathParam(pattern=JOB_ID)) -> Any:
        return get_job(job_id).to_dict()

    @app.delete("/jobs/{job_id}", response_model=JobView, dependencies=deps, summary="cancel a job",
                description="A queued job is cancelled at once; a running job stops at its next checkpoint.",
                responses={**r401, **r404, 409: {"model": Message, "description": "the job has already ended"}})
    def cancel(job_id: str = PathParam(pattern=JOB_ID)) -> Any:
        get_job(job_id)
        try:
            return store.cancel(job_id).to_dict()
        except JobStoreError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/jobs/{job_id}/artifacts", response_model=list[Artifact], dependencies=deps,
             summary="the files of a job's run folder", responses={**r401, **r404})
    def artifacts(job_id: str = PathParam(pattern=JOB_ID)) -> Any:
        root = Path(get_job(job_id).run_dir)
        if not root.is_dir():
            return []
        found = []
        try:
            for p in sorted(root.rglob("*")):
                if p.is_symlink() or any(part.endswith(".tmp") for part in p.parts):
                    continue
                try:
                    if p.is_file():
                        found.append({"name": p.relative_to(root).as_posix(), "bytes": p.stat().st_size})
                except OSError:  # removed while listing (a running job rotates checkpoints)
                    continue
        except OSError:  # a folder removed while listing
            pass
        return found

    @app.get("/jobs/{job_id}/artifacts/{name:path}", dependencies=deps, summary="download one file of a job's "
             "run folder (e.g. triples.parquet, triples.jsonl, report.md, manifest.json)",
             response_model=None,
             responses={**r401, **r404, 200: {"content": {"application/octet-stream": {"schema": {
                 "type": "string", "format": "binary"}}}, "description": "the file"},
                        400: {"model": Message, "description": "the name leaves the run folder"}})
    def artifact(job_id: str = PathParam(pattern=JOB_ID), name: str = PathParam()) -> Any:
        root = Path(get_job(job_id).run_dir).resolve()
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or "\x00" in name or "\\" in name:
            raise HTTPException(400, f"artifact name {name!r} must be a relative path inside the run folder")
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            raise HTTPException(400, f"artifact name {name!r} leaves the run folder")
        if not target.is_file():
            raise HTTPException(404, f"job {job_id} has no artifact {name!r}")
        return FileResponse(target, filename=target.name)

    @app.get("/jobs/{job_id}/log", dependencies=deps, summary="the workers' log of a job", response_model=None,
             responses={**r401, **r404, 200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                              "description": "the log text"}})
    def job_log(job_id: str = PathParam(pattern=JOB_ID)) -> Any:
        get_job(job_id)
        path = store.log_path(job_id)
        return PlainTextResponse(path.read_text(errors="replace") if path.is_file() else "")

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if request.url.path.startswith("/ui/"):  # the web page's own paths answer people in HTML
            from .web import error_page

            return error_page(exc.status_code, "No page at this address." if exc.status_code == 404 else str(exc.detail))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            methods: set[str] = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] != Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(JobStoreError)
    def store_error(request: Request, exc: JobStoreError) -> JSONResponse:  # noqa: ARG001
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    app.state.store = store
    from .web import add_web_routes

    add_web_routes(app, store, token)
    _document_configs(app)
    return app


def config_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schema of each job kind's config, generated from its settings dataclass (``settings``); the
    keys the service sets itself (output folder, overwrite) left out."""
    from ..settings import json_schema

    return {kind_schema_name(k.name): json_schema(k.settings(), f"{k.name} job config", skip=k.service_sets)
            for k in kinds.KINDS.values()}


def _document_configs(app) -> None:
    """Add every kind's config schema to the OpenAPI components (``JobRequest.config`` names them)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(config_schemas())
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


def serve(home: str | None, host: str = "127.0.0.1", port: int = 8750, token_file: str | None = None,
          data_roots: Iterable[str | os.PathLike] | None = None) -> None:
    """Run the API with uvicorn until interrupted; ``data_roots``: see ``create_app``."""
    from .store import open_store

    token = read_token(token_file)
    if not is_loopback(host) and token is None:
        raise ServiceError(f"--host {host} is not a loopback address: set ${TOKEN_ENV} or pass --token-file, "
                           "so that requests must carry 'Authorization: Bearer <token>'")
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the job service needs FastAPI and uvicorn: pip install 'hardneg[service]'") from exc
    app = create_app(open_store(home, kinds.NAMES), token, data_roots)
    uvicorn.run(app, host=host, port=port, log_level="info")


__all__ = ["KINDS", "STATES", "ServiceError", "create_app", "is_loopback", "read_token", "serve"]
