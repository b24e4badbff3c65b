"""OpenAI's Files and Batch APIs on the local oracle server (``fbloop serve-oracle``).

Mounted by :func:`fbloop.agents.server.make_app`; the routes and objects are those OpenAI documents:

- ``POST /v1/files`` (multipart ``file`` + ``purpose``), ``GET /v1/files``, ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (streamed from disk), ``DELETE /v1/files/{id}``;
- ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window`` ``"24h"``, ``metadata``),
  ``GET /v1/batches`` (``limit``, ``after``), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

A batch goes ``validating`` → ``in_progress`` → ``finalizing`` → ``completed``; or ``failed`` when its
input file does not validate (a line that is not JSON, a missing ``custom_id``, ``method`` or ``body``,
a duplicate ``custom_id``, a ``url`` other than the batch's endpoint, more than ``max_requests``
lines); or ``expired`` after ``expire_after`` lines (the rest go to the error file as
``batch_expired``); or ``cancelling`` → ``cancelled`` (lines not yet run: ``batch_cancelled``). Each
line is answered by the same :class:`fbloop.agents.server.OracleModel` as a synchronous request, so
``error_rate`` sends a share of lines to the error file with their 429 / 500, and ``malformed`` breaks
a share of replies. Output lines are ``{"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error": null}``; error lines carry the failed response, or ``"response": null`` and an
``error`` object. Each stage lasts at least ``delay_s`` (a provider's latency, compressed).

Files live on disk (a temporary folder unless ``folder`` is given) and are read and written line by
line, so a 200 MB input costs the server no memory. One worker thread runs the batches in the order
they were created.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

from ..errors import ConfigError

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/moderations")
COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class BatchServerConfig:
    delay_s: float = 0.0  # the least time each stage (validating, in_progress, finalizing) lasts
    expire_after: int | None = None  # lines run before a batch expires; None: batches never expire
    max_requests: int = 50_000  # lines an input file may hold (OpenAI's limit)
    max_bytes: int = 200_000_000  # size an input file may have (OpenAI's 200 MB)
    folder: str | None = None  # where files are kept; None: a temporary folder
    create_errors: int = 0  # the first this many POST /v1/batches answer 500 and create nothing (an outage)

    def __post_init__(self) -> None:
        if self.delay_s < 0:
            raise ConfigError(f"Expect delay_s ≥ 0, got {self.delay_s}.")
        if self.expire_after is not None and self.expire_after < 0:
            raise ConfigError(f"Expect expire_after ≥ 0 lines, got {self.expire_after}.")
        if self.create_errors < 0:
            raise ConfigError(f"Expect create_errors ≥ 0, got {self.create_errors}.")
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ConfigError(f"Expect positive limits, got max_requests={self.max_requests}, "
                              f"max_bytes={self.max_bytes}.")


def _error(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class BatchService:
    """Files and batches of one server; ``reply(body) -> (status, body, headers)`` answers a line."""

    def __init__(self, config: BatchServerConfig, reply):
        self.config = config
        self.reply = reply
        self.folder = config.folder or tempfile.mkdtemp(prefix="fbloop-batches-")
        os.makedirs(self.folder, exist_ok=True)
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.order: list[str] = []  # batch ids, oldest first
        self.create_errors = config.create_errors  # outages still to simulate
        self.lock = threading.Lock()
        self.jobs: queue.Queue[str] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="fbloop-batch-worker", daemon=True)
        self.worker.start()

    # ------------------------------------------------------------ files

    def path(self, file_id: str) -> str:
        return os.path.join(self.folder, file_id)

    def add_file(self, src, filename: str, purpose: str) -> dict:
        """Keep an uploaded (or produced) file; ``src`` is a binary file object, copied in blocks."""
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        with open(self.path(file_id), "wb") as out:
            shutil.copyfileobj(src, out, COPY_BLOCK)
        obj = {"id": file_id, "object": "file", "bytes": os.path.getsize(self.path(file_id)),
               "created_at": int(time.time()), "filename": filename, "purpose": purpose, "status": "processed",
               "expires_at": None, "status_details": None}
        with self.lock:
            self.files[file_id] = obj
        return obj

    def delete_file(self, file_id: str) -> dict | None:
        with self.lock:
            obj = self.files.pop(file_id, None)
        if obj is None:
            return None
        os.remove(self.path(file_id))
        return {"id": file_id, "object": "file", "deleted": True}

    # ------------------------------------------------------------ batches

    def create(self, body: dict) -> tuple[int, dict]:
        """``(status, object)`` for ``POST /v1/batches``."""
        with self.lock:
            if self.create_errors > 0:
                self.create_errors -= 1
                return 500, _error("simulated outage: the batch was not created", "server_error")
        file_id, endpoint, window = body.get("input_file_id"), body.get("endpoint"), body.get("completion_window")
        if endpoint not in ENDPOINTS:
            return 400, _error(f"Invalid endpoint {endpoint!r}; expect one of {list(ENDPOINTS)}.")
        if window != "24h":
            return 400, _error(f"Invalid completion_window {window!r}; expect '24h'.")
        meta = body.get("metadata")
        if meta is not None and not (isinstance(meta, dict) and len(meta) <= 16
                                     and all(isinstance(v, str) and len(v) <= 512 for v in meta.values())):
            return 400, _error("metadata must be at most 16 string pairs, values at most 512 characters.")
        with self.lock:
            f = self.files.get(file_id) if isinstance(file_id, str) else None
        if f is None:
            return 404, _error(f"No such File object: {file_id}")
        if f["purpose"] != "batch":
            return 400, _error(f"File {file_id} has purpose {f['purpose']!r}; a batch's input needs 'batch'.")
        now = int(time.time())
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": endpoint, "errors": None,
                 "input_file_id": file_id, "completion_window": window, "status": "validating",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                 "expires_at": now + 24 * 3600, "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": meta}
        with self.lock:
            self.batches[batch["id"]] = batch
            self.order.append(batch["id"])
        self.jobs.put(batch["id"])
        return 200, dict(batch)

    def get(self, batch_id: str) -> dict | None:
        with self.lock:
            b = self.batches.get(batch_id)
            return None if b is None else json.loads(json.dumps(b))

    def cancel(self, batch_id: str) -> tuple[int, dict]:
        with self.lock:
            b = self.batches.get(batch_id)
            if b is None:
                return 404, _error(f"No such Batch object: {batch_id}")
            if b["status"] in ("completed", "failed", "expired", "cancelled"):
                return 409, _error(f"Cannot cancel a batch with status {b['status']!r}.")
            if b["status"] != "cancelling":
                b["status"], b["cancelling_at"] = "cancelling", int(time.time())
            return 200, json.loads(json.dumps(b))

    def page(self, limit: int, after: str | None) -> dict:
        """``GET /v1/batches``: newest first, ``limit`` a page, after the id ``after``."""
        with self.lock:
            ids = list(reversed(self.order))
            start = ids.index(after) + 1 if after in ids else 0
            chosen = ids[start:start + limit]
            data = [json.loads(json.dumps(self.batches[i])) for i in chosen]
        return {"object": "list", "data": data, "first_id": chosen[0] if chosen else None,
                "last_id": chosen[-1] if chosen else None, "has_more": start + limit < len(ids)}

    def _set(self, batch_id: str, **fields) -> bool:
        """Update a batch (a cancellation asked for stays asked for); ``False`` when it is being cancelled."""
        with self.lock:
            b = self.batches[batch_id]
            if b["status"] == "cancelling" and fields.get("status") in ("in_progress", "finalizing"):
                fields = {k: v for k, v in fields.items() if k != "status"}
            b.update(fields)
            return b["status"] != "cancelling"

    def _cancelling(self, batch_id: str) -> bool:
        with self.lock:
            return self.batches[batch_id]["status"] == "cancelling"

    # ------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            batch_id = self.jobs.get()
            try:
                self._run(batch_id)
            except Exception as exc:  # a server bug must fail the batch, not the worker
                self._set(batch_id, status="failed", failed_at=int(time.time()),
                          errors={"object": "list", "data": [{"code": "server_error", "message": str(exc)[:500],
                                                              "param": None, "line": None}]})

    def _validate(self, path: str, endpoint: str) -> tuple[int, list[dict]]:
        """``(lines, errors)`` of an input file, read line by line."""
        errors: list[dict] = []
        seen: set[str] = set()
        n = 0
        if os.path.getsize(path) > self.config.max_bytes:
            return 0, [{"code": "file_too_large", "message": f"The file exceeds {self.config.max_bytes} bytes.",
                        "param": None, "line": None}]
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                why = _check_line(raw, endpoint, seen)
                if why and len(errors) < 100:
                    errors.append({"code": why[0], "message": why[1], "param": why[2], "line": n})
        if n > self.config.max_requests:
            errors.append({"code": "too_many_requests", "param": None, "line": None,
                           "message": f"The file has {n} requests; a batch holds at most {self.config.max_requests}."})
        if n == 0:
            errors.append({"code": "empty_file", "message": "The input file has no requests.", "param": None,
                           "line": None})
        return n, errors

    def _run(self, batch_id: str) -> None:
        cfg = self.config
        b = self.get(batch_id)
        time.sleep(cfg.delay_s)
        total, errors = self._validate(self.path(b["input_file_id"]), b["endpoint"])
        if errors and not self._cancelling(batch_id):
            self._set(batch_id, status="failed", failed_at=int(time.time()),
                      errors={"object": "list", "data": errors})
            return
        if self._set(batch_id, status="in_progress", in_progress_at=int(time.time()),
                     request_counts={"total": total, "completed": 0, "failed": 0}):
            time.sleep(cfg.delay_s)
        out_path, err_path = self.path(f"{batch_id}.out"), self.path(f"{batch_id}.err")
        ended = self._lines(batch_id, out_path, err_path, total)
        now = int(time.time())
        if ended == "completed":
            self._set(batch_id, status="finalizing", finalizing_at=now)
            time.sleep(cfg.delay_s)
        out_id = self._publish(out_path, f"{batch_id}_output.jsonl")
        err_id = self._publish(err_path, f"{batch_id}_error.jsonl")
        stamp = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[ended]
        self._set(batch_id, status=ended, output_file_id=out_id, error_file_id=err_id, **{stamp: int(time.time())})

    def _lines(self, batch_id: str, out_path: str, err_path: str, total: int) -> str:
        """Run every line; returns how the batch ended: completed, expired or cancelled."""
        limit = self.config.expire_after
        done = failed = 0
        ended = "completed"
        with open(self.path(self.get(batch_id)["input_file_id"]), "rb") as fh, \
                open(out_path, "w") as out, open(err_path, "w") as err:
            for n, raw in enumerate(fh):
                line = json.loads(raw)
                if ended == "completed" and limit is not None and n >= limit:
                    ended = "expired"
                if ended == "completed" and n % 64 == 0 and self._cancelling(batch_id):
                    ended = "cancelled"
                if ended != "completed":
                    code = "batch_expired" if ended == "expired" else "batch_cancelled"
                    text = ("This request could not be executed before the completion window expired."
                            if ended == "expired" else "This request was not executed: the batch was cancelled.")
                    err.write(json.dumps({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line["custom_id"],
                                          "response": None, "error": {"code": code, "message": text}}) + "\n")
                    failed += 1
                    continue
                status, body, headers = self.reply(line["body"])
                rec = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line["custom_id"],
                       "response": {"status_code": status, "request_id": headers.get("x-request-id")
                                    or f"req_{uuid.uuid4().hex[:24]}", "body": body}, "error": None}
                (out if status == 200 else err).write(json.dumps(rec) + "\n")
                done += status == 200
                failed += status != 200
                if n % 256 == 255:
                    self._set(batch_id, request_counts={"total": total, "completed": done, "failed": failed})
        self._set(batch_id, request_counts={"total": total, "completed": done, "failed": failed})
        return ended

    def _publish(self, path: str, name: str) -> str | None:
        """A finished output or error file as a file object (``None`` when it holds no line)."""
        if os.path.getsize(path) == 0:
            os.remove(path)
            return None
        with open(path, "rb") as fh:
            obj = self.add_file(fh, name, "batch_output")
        os.remove(path)
        return obj["id"]


def _check_line(raw: bytes, endpoint: str, seen: set[str]) -> tuple[str, str, str | None] | None:
    """Why one input line is invalid ``(code, message, param)``, or ``None``."""
    try:
        line = json.loads(raw)
    except ValueError:
        return "invalid_json_line", "This line is not parseable as valid JSON.", None
    if not isinstance(line, dict):
        return "invalid_request", "Each line must be a JSON object.", None
    cid = line.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id"
    if cid in seen:
        return "duplicate_custom_id", f"The custom_id {cid!r} is not unique in the file.", "custom_id"
    seen.add(cid)
    if line.get("method") != "POST":
        return "invalid_method", f"Invalid method {line.get('method')!r}; expect 'POST'.", "method"
    if line.get("url") != endpoint:
        return "mismatched_endpoint", f"The url {line.get('url')!r} does not match the batch's endpoint.", "url"
    body = line.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "invalid_body", "The body must be a JSON object naming a model.", "body"
    extra = set(line) - {"custom_id", "method", "url", "body"}
    if extra:
        return "invalid_request", f"Unknown line fields {sorted(extra)}.", None
    return None


def routes(service: BatchService, authorized):
    """The Starlette routes of the Files and Batch APIs."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    def guard(fn):
        async def inner(request: Request):
            if not authorized(request):
                return JSONResponse(_error("invalid api key"), status_code=401)
            return await fn(request)
        return inner

    async def upload(request: Request):
        form = await request.form(max_part_size=service.config.max_bytes + COPY_BLOCK)
        up, purpose = form.get("file"), form.get("purpose")
        if up is None or isinstance(up, str):
            return JSONResponse(_error("Missing required parameter: 'file'."), status_code=400)
        if purpose not in ("batch", "fine-tune", "assistants", "vision", "user_data", "evals"):
            return JSONResponse(_error(f"Invalid purpose {purpose!r}."), status_code=400)
        obj = service.add_file(up.file, up.filename or "upload.jsonl", purpose)
        await up.close()
        if purpose == "batch" and obj["bytes"] > service.config.max_bytes:
            service.delete_file(obj["id"])
            return JSONResponse(_error(f"File is {obj['bytes']} bytes; batch input files hold at most "
                                       f"{service.config.max_bytes}."), status_code=400)
        return JSONResponse(obj)

    async def list_files(request: Request):
        with service.lock:
            data = list(service.files.values())
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    async def one_file(request: Request):
        file_id = request.path_params["file_id"]
        if request.method == "DELETE":
            out = service.delete_file(file_id)
        else:
            with service.lock:
                out = service.files.get(file_id)
        return JSONResponse(out) if out else JSONResponse(_error(f"No such File object: {file_id}"), status_code=404)

    async def content(request: Request):
        file_id = request.path_params["file_id"]
        with service.lock:
            known = file_id in service.files
        if not known:
            return JSONResponse(_error(f"No such File object: {file_id}"), status_code=404)
        return FileResponse(service.path(file_id), media_type="application/octet-stream")

    async def create(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(_error("body is not JSON"), status_code=400)
        status, out = service.create(body if isinstance(body, dict) else {})
        return JSONResponse(out, status_code=status)

    async def list_batches(request: Request):
        try:
            limit = min(max(int(request.query_params.get("limit", 20)), 1), 100)
        except ValueError:
            return JSONResponse(_error("limit must be an integer"), status_code=400)
        return JSONResponse(service.page(limit, request.query_params.get("after")))

    async def one_batch(request: Request):
        b = service.get(request.path_params["batch_id"])
        return JSONResponse(b) if b else JSONResponse(_error("No such Batch object"), status_code=404)

    async def cancel(request: Request):
        status, out = service.cancel(request.path_params["batch_id"])
        return JSONResponse(out, status_code=status)

    return [Route("/v1/files", guard(upload), methods=["POST"]),
            Route("/v1/files", guard(list_files), methods=["GET"]),
            Route("/v1/files/{file_id}", guard(one_file), methods=["GET", "DELETE"]),
            Route("/v1/files/{file_id}/content", guard(content), methods=["GET"]),
            Route("/v1/batches", guard(create), methods=["POST"]),
            Route("/v1/batches", guard(list_batches), methods=["GET"]),
            Route("/v1/batches/{batch_id}", guard(one_batch), methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", guard(cancel), methods=["POST"])]
