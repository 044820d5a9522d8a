"""A small client of the job service's HTTP API (standard library only), used by ``hardneg submit``,
``status``, ``wait``, ``fetch`` and ``cancel``. Knows the API's paths, not how jobs run."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from retriever.errors import HardnegError

SERVER_ENV = "HARDNEG_SERVER"
DEFAULT_SERVER = "http://127.0.0.1:8750"
TOKEN_ENV = "HARDNEG_TOKEN"


class ClientError(HardnegError):
    """The service refused a request or could not be reached; the message holds its answer."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, token_file: str | None = None,
                 timeout: float = 60.0) -> None:
        self.server = (server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
        if token is None and token_file:
            token = Path(token_file).read_text().strip()
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - the URL is the user's server
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                detail = json.loads(text).get("detail", text)
            except (json.JSONDecodeError, AttributeError):
                detail = text
            if isinstance(detail, list):  # validation errors: field and message
                detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}"
                                   for d in detail)
            raise ClientError(f"{method} {path}: HTTP {exc.code}: {detail}", exc.code, detail) from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach the job service at {self.server} ({exc.reason}); start it with "
                              "`hardneg serve` or set --server / $HARDNEG_SERVER") from None
        if raw:
            return resp
        with resp:
            return json.loads(resp.read() or b"null")

    def submit(self, kind: str, config: dict[str, Any] | None = None, config_toml: str | None = None,
               name: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "name": name}
        if config_toml is not None:
            body["config_toml"] = config_toml
        else:
            body["config"] = config or {}
        return self._request("POST", "/jobs", body)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}")

    def jobs(self, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({k: v for k, v in (("state", state), ("kind", kind), ("limit", limit)) if v})
        return self._request("GET", f"/jobs?{q}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/jobs/{urllib.parse.quote(job_id, safe='')}")

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}/artifacts")

    def fetch(self, job_id: str, name: str, dest: str | os.PathLike) -> Path:
        """Download one artifact to ``dest`` (a file, or a folder to put it in); written under a temporary
        name and renamed when complete."""
        path = f"/jobs/{urllib.parse.quote(job_id, safe='')}/artifacts/{urllib.parse.quote(name)}"
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / Path(name).name
        tmp = dest.with_name(dest.name + ".part")
        with self._request("GET", path, raw=True) as resp, open(tmp, "wb") as f:
            shutil.copyfileobj(resp, f)
        tmp.replace(dest)
        return dest

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0, on_update=None) -> dict[str, Any]:
        """Poll until the job ends; returns its last state. ``on_update(job)`` is called on each change."""
        start, seen = time.monotonic(), None
        while True:
            job = self.job(job_id)
            key = (job["state"], job["stage"], json.dumps(job["progress"]))
            if key != seen and on_update is not None:
                on_update(job)
            seen = key
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            if timeout is not None and time.monotonic() - start > timeout:
                raise ClientError(f"job {job_id} is still {job['state']} after {timeout:.0f} s")
            time.sleep(poll)


def describe(job: dict[str, Any]) -> str:
    """One line for a person: id, kind, state, stage and progress."""
    p = job.get("progress") or {}
    prog = f" {p.get('done')}/{p.get('total')}" if p.get("total") else ""
    stage = f" [{job['stage']}{prog}]" if job.get("stage") and job["state"] == "running" else ""
    name = f" ({job['name']})" if job.get("name") else ""
    return f"{job['id']}  {job['kind']:<14} {job['state']:<9}{stage}{name}"
