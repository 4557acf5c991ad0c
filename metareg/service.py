"""The HTTP API of ``metareg serve``: predict, enrol and forget classes of one few-shot classifier.

Routes (JSON answers; images arrive as multipart form files named ``images``)::

    GET    /                 the page (metareg/static/index.html): enrol by dropping images, ask a query
    GET    /health           status, class count, limits, whether enrolments persist
    GET    /classes          [{name, images}]
    POST   /predict?top=5    images -> [{image, label, unknown, probabilities (the top classes)}]
    POST   /classes/{name}   enrol images as a new class   (201; 409 when it exists)
    DELETE /classes/{name}   forget a class

Safety: a request's body is counted as it arrives and refused past ``max_bytes`` (413), and so are
more than ``max_images`` files and images over ``max_pixels`` (Pillow's decompression-bomb guard,
through :mod:`metareg.images`); each 4xx answer names the limit and the option that sets it.
Uploads are decoded from memory; class names are checked and never become paths: the only file
the service writes is the model it serves, replaced atomically (:mod:`metareg.files`) after each
enrolment, and a failed write puts the classifier back as it was. Nothing is unpickled.

Prediction and enrolment share one lock around the model work (decoding is outside it), so a
prediction sees the classes before an enrolment or after it, never a mixture. Prototype-style
classifiers answer through :mod:`metareg.prototype_search` (top-k over classes in chunks).
"""
# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations (Request) at
# definition time, and those names are imported inside create_app.
import io
import re
import threading
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from metareg.errors import DataError, MetaregError

NAME = re.compile(r"[^\x00-\x1f\x7f/\\]{1,100}")


@dataclass(frozen=True)
class Limits:
    """What one request may carry; the option names are how 4xx answers tell users to change them."""

    max_images: int = 64        # --max-images: files in one request
    max_bytes: int = 32 << 20   # --max-bytes: the whole request body
    max_pixels: int = 40_000_000  # --max-pixels: one decoded image (PIL.Image.MAX_IMAGE_PIXELS)
    max_top: int = 100          # probabilities returned per query (?top=)


class Refused(Exception):
    """A request outside the limits or with bad input: its HTTP status and one line saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_class_name(name: str) -> str:
    if not NAME.fullmatch(name) or name != name.strip() or name.startswith("."):
        raise Refused(400, f"class name {name[:120]!r} is not allowed: use 1-100 printable characters, no '/' or "
                           "'\\', no leading '.' or surrounding spaces")
    return name


class Service:
    """The classifier, its lock, and where enrolments are saved (``model_path``; ``None``: kept in memory)."""

    def __init__(self, clf, *, model_path: str | Path | None, limits: Limits, top: int = 5,
                 index: str = "exact", chunk_size: int = 4096):
        self.clf, self.limits, self.top = clf, limits, int(top)
        self.model_path = Path(model_path) if model_path is not None else None
        self.index, self.chunk_size = index, chunk_size
        self.lock = threading.Lock()
        self.search = None
        self._refresh_search()

    def _refresh_search(self) -> None:
        from metareg.prototype_search import classifier_search

        self.search = classifier_search(self.clf, index=self.index, chunk_size=self.chunk_size)

    # -------------------------------------------------------------- decoding (outside the lock)
    def decode(self, uploads: list[tuple[str, bytes]]):
        """uint8 batch of the uploads; a bad or oversized image is one 4xx naming it."""
        from metareg.images import open_image

        if not uploads:
            raise Refused(400, "no images in the request: send them as multipart form files named 'images'")
        if len(uploads) > self.limits.max_images:
            raise Refused(413, f"{len(uploads)} images is more than this server's limit of {self.limits.max_images} "
                               "per request (--max-images); send fewer images per request")
        pictures, names = [], []
        for name, data in uploads:
            buffer = io.BytesIO(data)
            buffer.name = name
            try:
                pictures.append(open_image(buffer))
            except DataError as exc:
                if "decompression bombs" in str(exc):
                    raise Refused(413, f"{exc.args[0].split(';')[0]} (this server's --max-pixels "
                                       f"{self.limits.max_pixels})") from None
                raise Refused(400, str(exc)) from None
            names.append(name)
        try:
            return self.clf.load_images(pictures, names), names
        except MetaregError as exc:
            raise Refused(400, str(exc)) from None

    # -------------------------------------------------------------- model work (under the lock)
    def predict(self, batch, names: list[str], top: int | None) -> list[dict[str, Any]]:
        import torch

        k = self.top if top is None else top
        if not 1 <= k <= self.limits.max_top:
            raise Refused(400, f"top={k} is outside 1..{self.limits.max_top}; ask for fewer probabilities per query")
        with self.lock:
            classes = list(self.clf.classes)
            k = min(k, len(classes))
            if self.search is not None:
                from metareg.prototype_search import embed

                found = self.search.search(embed(self.clf, batch), k)
                logits, indices, probs = found.logits, found.indices, found.probabilities
            else:
                full = self.clf.predict_logits(batch)
                logits, indices = full.topk(k, dim=-1)
                probs = (logits - full.logsumexp(-1, keepdim=True)).exp()
            unknown = self.clf.unknown(logits[:, :1]) if hasattr(self.clf, "unknown") else torch.zeros(len(batch))
        return [{"image": name, "label": classes[int(idx[0])], "unknown": bool(u),
                 "probabilities": {classes[int(i)]: round(float(p), 6) for i, p in zip(idx, row, strict=True)}}
                for name, idx, row, u in zip(names, indices, probs, unknown, strict=True)]

    def classes(self) -> list[dict[str, Any]]:
        with self.lock:
            counts = getattr(self.clf, "counts", None) or [None] * len(self.clf.classes)
            return [{"name": c, "images": n} for c, n in zip(self.clf.classes, counts, strict=True)]

    def _change(self, how, *args) -> str:
        """Apply an enrolment change, save the model atomically, or put everything back as it was."""
        keep = {k: getattr(self.clf, k, None) for k in ("state", "classes", "counts", "support_images",
                                                          "support_labels")}
        try:
            done = how(*args)
            if self.model_path is not None:
                self.clf.save(self.model_path)
        except BaseException:
            for key, value in keep.items():
                setattr(self.clf, key, value)
            raise
        finally:
            self._refresh_search()
        return done

    def enrol(self, name: str, batch) -> dict[str, Any]:
        with self.lock:
            if name in self.clf.classes:
                raise Refused(409, f"class {name!r} already exists; DELETE /classes/{name} first, or choose another "
                                   "name")
            how = self._change(self.clf.add_class, name, batch)
            return {"class": name, "images": len(batch), "how": how, "classes": len(self.clf.classes),
                    "saved": self.model_path is not None}

    def remove(self, name: str) -> dict[str, Any]:
        with self.lock:
            if name not in self.clf.classes:
                raise Refused(404, f"class {name!r} is not in the model (GET /classes lists them)")
            if len(self.clf.classes) <= 2:
                raise Refused(409, f"cannot remove {name!r}: a few-shot model needs at least 2 classes; enrol "
                                   "another class first")
            how = self._change(self.clf.remove_class, name)
            return {"removed": name, "how": how, "classes": len(self.clf.classes),
                    "saved": self.model_path is not None}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "classes": len(self.clf.classes), "strategy": self.clf.strategy_name,
                "open_set": bool(getattr(self.clf, "open_set", None)), "search": self.index if self.search else "full",
                "persists_to": str(self.model_path) if self.model_path else None, "limits": asdict(self.limits)}


def page() -> bytes:
    return resources.files("metareg").joinpath("static/index.html").read_bytes()


def create_app(service: Service):
    """The FastAPI application serving ``service`` (body-size limit applied as ASGI middleware)."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import StarletteHTTPException as HTTPException  # what request.form() raises
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="metareg serve", docs_url=None, redoc_url=None)
    limits = service.limits

    @app.exception_handler(Refused)
    async def _refused(request, exc: Refused):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(MetaregError)
    async def _bad_input(request, exc: MetaregError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        try:
            form = await request.form(max_files=limits.max_images, max_fields=8, max_part_size=limits.max_bytes)
        except HTTPException as exc:
            if "files" in str(exc.detail).lower():
                raise Refused(413, f"more images than this server's limit of {limits.max_images} per request "
                                   "(--max-images); send fewer images per request") from None
            raise Refused(400, f"cannot read the request's form data: {exc.detail}") from None
        files = [v for k, v in form.multi_items() if k == "images" and hasattr(v, "read")]
        return [(f.filename or f"image {i}", await f.read()) for i, f in enumerate(files)]

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(page())

    @app.get("/health")
    def health():
        return service.health()

    @app.get("/classes")
    def classes():
        return {"classes": service.classes()}

    @app.post("/predict")
    async def predict(request: Request, top: int | None = None):
        batch, names = await run_in_threadpool(service.decode, await uploads(request))
        return {"predictions": await run_in_threadpool(service.predict, batch, names, top)}

    @app.post("/classes/{name}", status_code=201)
    async def enrol(name: str, request: Request):
        check_class_name(name)
        batch, _ = await run_in_threadpool(service.decode, await uploads(request))
        return await run_in_threadpool(service.enrol, name, batch)

    @app.delete("/classes/{name}")
    async def remove(name: str):
        return await run_in_threadpool(service.remove, check_class_name(name))

    return BodyLimit(app, limits.max_bytes)


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` (declared or streamed) with 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _message(self, size: str) -> bytes:
        import json

        return json.dumps({"detail": f"request body of {size} is more than this server's limit of {self.max_bytes} "
                                     "bytes (--max-bytes); send fewer or smaller images per request"}).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, f"{int(declared)} bytes")
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, f"more than {self.max_bytes} bytes")

    async def _refuse(self, send, size: str):
        body = self._message(size)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
