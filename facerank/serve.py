"""``facerank serve``: a REST API and a web page over one or more stores.

Built on FastAPI (the optional ``facerank[serve]`` extra); ``import facerank`` never imports it.
Each store is opened once per process.

The event loop never waits on a model or a store: it only parses requests and awaits. Every
model and store call (decoding an uploaded photo and making a thumbnail too) runs on a worker
thread, at most ``max_concurrent`` at once (by default one); requests beyond that wait
on a semaphore without holding a thread, and ``/api/health`` is answered on the loop itself,
never queued behind model work. Writes to one store (add, remove) queue behind one another on
a lock that is also awaited without holding a thread; queries keep answering from a consistent
state meanwhile.

Safety: a request body is counted as it arrives, chunked or not, and refused with 413 (closing
the connection) once it passes two photos' worth: the rest of it is never read. Each photo is
limited on its own as well (413). Uploads are recognised by their content rather than their
name (415 otherwise), re-encoded before anything is written, and saved under names the server
chooses; no path from a client ever reaches the file system; thumbnails come only from a
store's own records. Changes need the bearer ``token`` when one is set. With a ``read_token``,
the answers (the store list and info, which name people, thumbnails, identify, classify,
closest, faces, verify) need it or the write token; ``/api/health`` and the page stay open (the
page sends a token given in its address as ``#token=...`` or typed into the field it shows when
asked).
The CLI binds to 127.0.0.1 unless told otherwise, and refuses any other address without
``--token`` unless given ``--insecure-no-token``.

The answers are the library's own: ``PhotoAnswer.to_json()`` for ``/identify`` (the line
``facerank identify --json`` prints for the photo), ``Match``, ``Prediction``, ``Face`` and
``Verification`` as their ``to_json`` give them, and a ``ChangeReport`` for a change. The
pydantic models below only describe those shapes in the OpenAPI document (tests/test_openapi.py
checks every answer against them); the JSON sent is ``to_json``'s, untouched, with
``folders=False``: a stored file is named by its file name (and its ``id``), never by the server's
folders, which are none of a client's business.
"""

from __future__ import annotations

from dataclasses import replace

import asyncio
import hashlib
import hmac
import io
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerank import __version__, atomic
from facerank.errors import FacerankError, ImageError, NoFaceError, StoreError, UsageError
from facerank.data.images import load_image
from facerank.store import FaceStore, PhotoFaces, PhotoMatches, PhotoPeople
from facerank.store.face_store import check_person_name
from facerank.store.layout import UPLOAD_FOLDER

DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024
# A request body may carry this many full-size photos (verify's pair) plus the multipart
# headers and boundaries around them; adding sends more photos in more requests.
PHOTOS_PER_REQUEST = 2
MULTIPART_SLACK = 64 * 1024
THUMBNAIL_SIDE = 160
#: Model or store calls at once: one, as the runtime already uses every core for each call.
DEFAULT_CONCURRENCY = 1
PAGE = Path(__file__).parent / "web" / "index.html"
NO_FACE_DETAIL = ("no face found in {}: this store answers for faces only; try a photo where a "
                  "face is larger and seen from the front")

# -- what the answers look like, for the OpenAPI document ---------------------------------------
# Descriptions only: each endpoint sends the library's ``to_json`` as it is (a JSONResponse, which
# FastAPI does not filter through these models). ``extra="forbid"`` makes the schema list every
# key, so tests/test_openapi.py fails if ``to_json`` and the document ever disagree.

class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MatchJSON(_Shape):
    """A gallery image near the query (``Match.to_json``): ``rank`` 0 is the closest. ``path``
    is the file's name (the server's folders stay its own); ``id`` names its thumbnail:
    ``GET /api/stores/{name}/thumbnails/{id}``."""
    rank: int
    person: str
    distance: float
    path: str
    id: int


class PredictionJSON(_Shape):
    """A person the face may be, with the classifier's probability (``Prediction.to_json``)."""
    rank: int
    person: str
    probability: float


class FaceJSON(_Shape):
    """A face found in a photo (``Face.to_json``): ``box`` is [left, top, right, bottom] in the
    photo's pixels; ``landmarks`` maps 5 point names to [x, y]."""
    box: list[int] = Field(min_length=4, max_length=4)
    confidence: float
    landmarks: dict[str, list[float]]


class FaceAnswerJSON(_Shape):
    """One face's answer (``FaceAnswer.to_json``): ``face`` is null where the whole image was
    used; ``unknown`` is null until a threshold is calibrated."""
    face: FaceJSON | None
    people: list[PredictionJSON]
    matches: list[MatchJSON]
    unknown: bool | None


class PhotoAnswerJSON(_Shape):
    """A photo's answer (``PhotoAnswer.to_json``), a face at a time, largest first;
    ``threshold`` is the store's unknown threshold (``FaceStore.unknown_threshold``)."""
    photo: str
    faces: list[FaceAnswerJSON]
    threshold: float | None
    no_face: bool
    error: str | None


# The three below are the lines `facerank classify/closest/faces --json` print for a photo; the
# REST API answers an unreadable photo with a status (415), so its `error` is always null.

class ClassifyJSON(_Shape):
    """The classifier's most probable people for the largest face."""
    photo: str
    people: list[PredictionJSON]
    no_face: bool
    error: None


class ClosestJSON(_Shape):
    """The gallery images nearest the largest face, closest first."""
    photo: str
    matches: list[MatchJSON]
    no_face: bool
    error: None


class FacesJSON(_Shape):
    """The faces in a photo, largest first, and the photo's size in pixels."""
    photo: str
    width: int
    height: int
    faces: list[FaceJSON]
    error: None


class VerificationJSON(_Shape):
    """Two faces compared (``Verification.to_json``): ``same`` is null until a threshold is
    calibrated."""
    distance: float
    threshold: float | None
    same: bool | None


class ChangeJSON(_Shape):
    """What an addition or a removal did (``ChangeReport.to_json``) and the images indexed
    after it, as ``facerank index add/remove --json`` prints."""
    added: int
    updated: int
    removed: int
    unchanged: int
    reembedded: int
    moved: int
    skipped: list[list[str]]
    no_face: list[str]
    several_faces: list[str]
    images: int


class HealthJSON(_Shape):
    status: str
    version: str
    stores: list[str]


class StoreJSON(_Shape):
    name: str
    images: int
    indexed_people: int
    classifier_people: int
    image_size: int
    weights_origin: str | None


class StoreInfoJSON(BaseModel):
    """``facerank index info --json`` without the store's folder (more keys than listed)."""
    name: str
    images: int
    images_per_person: dict[str, int]


class Problem(_Shape):
    """Why a request got no answer: a sentence (or, for malformed parameters, FastAPI's list of
    what is wrong with each)."""
    detail: str | list[dict[str, Any]]


def _errors(**described: str) -> dict:
    """OpenAPI ``responses`` for error statuses: ``_errors(e404="...")``."""
    return {int(key[1:]): {"model": Problem, "description": text}
            for key, text in described.items()}


_STORE = _errors(e404="No store of that name is served (`detail` names those that are).")
_INVALID = _errors(e422="A parameter is missing or invalid (a number out of its range, a field "
                        "left out).")
_PHOTO = {**_INVALID, **_errors(
    e400="The body is not well-formed `multipart/form-data`.",
    e413="A photo, or the whole request, is larger than the server's upload limit.",
    e415="A photo cannot be read as an image (its content decides, not its name).")}
_NO_FACE = _errors(e422="A parameter is missing or invalid; or no face was found in a photo where "
                        "the store's face step skips photos without one (`detail`: \"no face "
                        "found in ...\").")
_NOT_READY = _errors(e409="The store cannot answer this yet: its index is empty or was built by "
                          "another model (`detail` says which `facerank index build` to run).")
_LOCKED = _errors(e409="Another process is writing to the store (a `facerank index` command): "
                       "try again once it is done.")
# Declared only on the endpoints that need a token on this server (see create_app).
_TOKEN_ERRORS = _errors(e401="No `Authorization: Bearer <token>` header was sent.",
                        e403="The bearer token is wrong.")

T = TypeVar("T")


class _Served:
    """A store with the lock that queues its writers.

    An asyncio lock, awaited on the event loop: a writer waiting its turn holds no thread.
    """

    def __init__(self, name: str, store: FaceStore):
        self.name = name
        self.store = store
        self.write_lock = asyncio.Lock()


class _BodyTooLarge(HTTPException):
    """A request body passed the limit while it was being read.

    An ``HTTPException``: FastAPI passes those through its form parsing (any other error there
    becomes a 400), so its handler answers 413. ``Connection: close`` makes the server drop the
    connection after the answer instead of reading the rest of the body to reuse it.
    """

    def __init__(self, detail: str):
        super().__init__(413, detail, headers={"Connection": "close"})


class _BodyLimit:
    """Pure ASGI middleware: refuse a request body past ``limit`` bytes as it streams in.

    Content-Length cannot be trusted (a chunked body has none, and a client may lie), so the
    bytes are counted as the app receives them; past the limit, receiving stops and the answer
    is 413. A declared Content-Length over the limit is refused before any byte is read.
    """

    def __init__(self, app: ASGIApp, *, limit: int, detail: str):
        self.app = app
        self.limit = limit
        self.detail = detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received, started = 0, False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge(self.detail)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            # Normally FastAPI's handler has answered already; this covers a body read
            # outside a route (by another middleware, say).
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = _BodyTooLarge(self.detail)
        response = JSONResponse({"detail": error.detail}, status_code=error.status_code,
                                headers=error.headers)
        await response(scope, receive, send)


def create_app(stores: Sequence[str | Path] | dict[str, str | Path], *, token: str | None = None,
               read_token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
               max_concurrent: int | None = None) -> FastAPI:
    """The FastAPI application serving ``stores`` (folders; named by folder name or dict key).

    ``token``: the bearer token that adding and removing need (None: anyone may).
    ``read_token``: when set, listing stores, store info, thumbnails and every query need it
    (or ``token``) too; it needs ``token``, as protecting answers while anyone may change them
    would be no protection. ``max_upload_bytes``: the largest photo; a request body may carry
    two such photos. ``max_concurrent``: how many model or store calls run at once (default 1:
    the runtime already spreads one call over every core, and two at once on 2 cores served
    fewer requests per second with slower health answers, benchmarks/results/serve_load-*.md);
    more wait their turn without holding a thread.

    The app runs on one event loop, as uvicorn runs it.

    >>> app = create_app(["faces/"], token="s3cret", read_token="visitor")
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)            # doctest: +SKIP
    """
    if not stores:
        raise UsageError("serve needs at least one store")
    token, read_token = token or None, read_token or None  # "" (an empty variable) means none
    if read_token and not token:
        raise UsageError("a read token without a write token would leave adding and "
                         "removing open to anyone; set a write token too (`token`; --token on the "
                         "command line)")
    workers = DEFAULT_CONCURRENCY if max_concurrent is None else max_concurrent
    if workers < 1:
        raise UsageError(f"max_concurrent must be at least 1, not {max_concurrent}")
    named = stores if isinstance(stores, dict) else {Path(s).resolve().name: s for s in stores}
    if len(named) < len(stores):
        raise UsageError("two stores have the same folder name; pass a dict of names to folders")
    served = {name: _Served(name, FaceStore.open(folder)) for name, folder in named.items()}
    page_html = PAGE.read_text("utf-8")  # read once: it is part of the package, not of the store

    app = FastAPI(title="facerank", version=__version__,
                  description="Who is in a photo, and which gallery images are closest.")
    request_limit = max_upload_bytes * PHOTOS_PER_REQUEST + MULTIPART_SLACK
    app.add_middleware(_BodyLimit, limit=request_limit,
                       detail=f"request body larger than {request_limit:,} bytes: send at most "
                              f"{PHOTOS_PER_REQUEST} photos of up to {max_upload_bytes:,} bytes "
                              "each per request")
    slots = asyncio.Semaphore(workers)

    async def compute(function: Callable[..., T], /, *args, **kwargs) -> T:
        # The slot is awaited here, on the loop, before a thread is taken: requests queued
        # behind busy workers hold no thread, and the loop stays free for /api/health.
        async with slots:
            return await run_in_threadpool(function, *args, **kwargs)

    bearer = HTTPBearer(auto_error=False)

    def bearer_check(accepted: list[str], what: str):
        """A dependency letting through only requests with one of the ``accepted`` tokens."""

        async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
            if credentials is None:
                raise HTTPException(401, f"{what}: send 'Authorization: Bearer <token>'",
                                    headers={"WWW-Authenticate": "Bearer"})
            given = credentials.credentials.encode()
            # Each token compared in constant time, and all of them: no early way out.
            if not any([hmac.compare_digest(given, known.encode()) for known in accepted]):
                raise HTTPException(403, "wrong token")

        return check

    # Endpoints that change a store need the write token; with a read token, the answers need
    # either. Without a token, no check is attached and no 401/403 is declared.
    writing = [Depends(bearer_check([token], "this endpoint changes the store"))] if token else []
    reading = [Depends(bearer_check([read_token, token], "this server answers only with a "
                                    "token (in the page: open /#token=<token>)"))
               ] if read_token else []
    write_errors = _TOKEN_ERRORS if token else {}
    read_errors = _TOKEN_ERRORS if read_token else {}

    async def get_store(name: str) -> _Served:
        # async: a plain def dependency would take a worker thread for a dict lookup.
        if name not in served:
            raise HTTPException(404, f"no store named {name!r}; stores: {', '.join(served)}")
        return served[name]

    async def read_photo(upload: UploadFile, field: str = "photo") -> Image.Image:
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"{field} is larger than {max_upload_bytes:,} bytes")
        return await compute(_decode, data, f"{field} ({upload.filename or 'upload'})")

    @app.exception_handler(FacerankError)
    async def facerank_error(request: Request, error: FacerankError):
        if isinstance(error, NoFaceError):
            # The store's message names the in-memory upload and a training flag: neither
            # means anything to a client.
            return JSONResponse({"detail": NO_FACE_DETAIL.format("the photo")}, status_code=422)
        if isinstance(error, UsageError):
            # The library's own check of what the client sent (a person's name, say).
            return JSONResponse({"detail": str(error)}, status_code=422)
        if isinstance(error, StoreError):
            # The store's state, not the request, is what stands in the way (an index to build,
            # another process writing): the same request succeeds once that is done.
            return JSONResponse({"detail": str(error)}, status_code=409)
        return JSONResponse({"detail": str(error)}, status_code=500)

    def answer(data: dict) -> JSONResponse:
        # Sent as built: FastAPI would otherwise pass it through the endpoint's response model.
        return JSONResponse(data)

    # -- open to all -----------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(page_html)

    @app.get("/api/health", response_model=HealthJSON)
    async def health():
        """Liveness: the stores this process serves. Answered on the event loop at once, never
        queued behind model work."""
        return {"status": "ok", "version": __version__, "stores": list(served)}

    # -- reading ---------------------------------------------------------------------------------

    @app.get("/api/stores", dependencies=reading, response_model=list[StoreJSON],
             responses=read_errors)
    async def list_stores():
        """Every store with its summary."""
        return await compute(lambda: [{"name": name, **_summary(s.store)}
                                      for name, s in served.items()])

    @app.get("/api/stores/{name}", dependencies=reading, response_model=StoreInfoJSON,
             responses={**_STORE, **read_errors})
    async def store_info(entry: _Served = Depends(get_store)):
        """One store: model, preprocessing, index size, images per person (`facerank index
        info --json` without the store's folder)."""
        info = await compute(entry.store.info)
        info.pop("store", None)  # the server's folder is none of the client's business
        return answer({"name": entry.name, **info})

    @app.post("/api/stores/{name}/identify", dependencies=reading, response_model=PhotoAnswerJSON,
              responses={**_STORE, **_PHOTO, **_NOT_READY, **read_errors})
    async def identify(photo: UploadFile = File(...), k: int = Query(5, ge=1, le=100),
                       top_k: int = Query(5, ge=1, le=100),
                       largest: bool = Query(False, description="Answer for the largest face "
                                             "only."),
                       entry: _Served = Depends(get_store)):
        """Who is in the photo: every face, largest first, with its box and landmarks, the
        `top_k` most probable people, the `k` closest gallery images, and `unknown`.

        The answer is `PhotoAnswer.to_json()`, the line `facerank identify --json` prints for
        the photo (`photo` is the upload's file name). `unknown` is true when a face's nearest
        gallery image lies beyond the store's calibrated unknown threshold (`facerank
        calibrate`), null when none is calibrated. A photo without a face gets `faces: []`
        where the store's face step skips such photos, or one answer for the whole image
        (`face` null) where it uses the whole image (always so for a store without a face
        step). With an empty index (a
        store trained but not yet built) the people are still answered; `matches` are empty.
        """
        image = await read_photo(photo)

        def identified():
            [answered] = entry.store.identify_each([image], k=k, top_k=top_k, every=not largest)
            return replace(answered, photo=_name(photo)).to_json(folders=False)

        return answer(await compute(identified))

    @app.post("/api/stores/{name}/classify", dependencies=reading, response_model=ClassifyJSON,
              responses={**_STORE, **_PHOTO, **_NO_FACE, **read_errors})
    async def classify(photo: UploadFile = File(...), top_k: int = Query(5, ge=1, le=100),
                       entry: _Served = Depends(get_store)):
        """The `top_k` most probable people by the fine-tuned classifier alone (no index
        needed), for the largest face."""
        image = await read_photo(photo)
        people = await compute(entry.store.classify, image, top_k=top_k)
        return answer(PhotoPeople(photo=_name(photo), people=people).to_json())

    @app.post("/api/stores/{name}/closest", dependencies=reading, response_model=ClosestJSON,
              responses={**_STORE, **_PHOTO, **_NO_FACE, **_NOT_READY, **read_errors})
    async def closest(photo: UploadFile = File(...), k: int = Query(5, ge=1, le=100),
                      entry: _Served = Depends(get_store)):
        """The `k` gallery images nearest the largest face, closest first. Each match's `id`
        names its thumbnail: `GET /api/stores/{name}/thumbnails/{id}`."""
        image = await read_photo(photo)
        matches = await compute(entry.store.closest, image, k=k)
        return answer(PhotoMatches(photo=_name(photo), matches=matches).to_json(folders=False))

    @app.post("/api/stores/{name}/faces", dependencies=reading, response_model=FacesJSON,
              responses={**_STORE, **_PHOTO, **read_errors})
    async def faces(photo: UploadFile = File(...), entry: _Served = Depends(get_store)):
        """Just the faces, largest first: each face's box ([left, top, right, bottom] in the
        photo's pixels), the detector's confidence and 5 landmarks; no network is run.

        `width` and `height` are the photo's. `faces` is `[]` for a photo without a face, and
        always for a store without a face step.
        """
        image = await read_photo(photo)
        found = await compute(entry.store.find_faces, image)
        return answer(PhotoFaces(photo=_name(photo), faces=found, width=image.width,
                                 height=image.height).to_json())

    @app.post("/api/stores/{name}/verify", dependencies=reading, response_model=VerificationJSON,
              responses={**_STORE, **_PHOTO, **_NO_FACE, **read_errors})
    async def verify(photo_a: UploadFile = File(...), photo_b: UploadFile = File(...),
                     entry: _Served = Depends(get_store)):
        """How far apart two faces are; `same` once the store has a calibrated threshold."""
        image_a = await read_photo(photo_a, "photo_a")
        image_b = await read_photo(photo_b, "photo_b")

        def verified():
            try:
                return entry.store.verify(image_a, image_b).to_json()
            except NoFaceError:
                # Say which photo: the store's error cannot tell two uploads apart.
                faceless = "photo_a" if not entry.store.find_faces(image_a) else "photo_b"
                raise HTTPException(422, NO_FACE_DETAIL.format(faceless)) from None

        return answer(await compute(verified))

    @app.get("/api/stores/{name}/thumbnails/{record_id}", dependencies=reading,
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {}},
                              "description": "A JPEG at most 160 pixels on its longer side."},
                        **_STORE, **_INVALID, **read_errors,
                        **_errors(e410="The image's file can no longer be read.")})
    async def thumbnail(record_id: int, entry: _Served = Depends(get_store)):
        """A small JPEG of an indexed image, by its record id (a match's `id`). A 404 also
        answers an id the store does not hold."""
        return await compute(_thumbnail, entry, record_id)

    # -- changing --------------------------------------------------------------------------------

    @app.post("/api/stores/{name}/people/{person}/images", dependencies=writing,
              response_model=ChangeJSON,
              responses={**_STORE, **_PHOTO, **_LOCKED, **write_errors})
    async def add_images(person: str, photos: list[UploadFile] = File(...),
                         entry: _Served = Depends(get_store)):
        """Add photos of a person (new or known) to the store and its index.

        The answer is the store's change report (`added`, `unchanged`, photos without a face in
        `no_face` or `skipped`, ...) and the images indexed after it, as `facerank index add
        --json` prints them. A person's name may not be blank, contain `/` or `\\`, or start
        with `.` (422).
        """
        check_person_name(person)  # the library's rule; its UsageError answers 422
        images = [await read_photo(upload, f"photos[{i}]") for i, upload in enumerate(photos)]

        def add():
            # Saved under the write lock: a removal of the same person cannot delete a file
            # (the store deletes its uploads with their last record) between save and add.
            paths = _save_uploads(entry.store.folder / UPLOAD_FOLDER, person, images)
            report = entry.store.add(paths, person=person)
            return {**report.to_json(folders=False), "images": len(entry.store)}

        # Writers of one store queue here, holding no thread while they wait.
        async with entry.write_lock:
            return answer(await compute(add))

    @app.delete("/api/stores/{name}/people/{person}", dependencies=writing,
                response_model=ChangeJSON,
                responses={**_errors(e404="No store of that name, or no images of that person "
                                          "in it."), **_LOCKED, **write_errors})
    async def remove_person(person: str, entry: _Served = Depends(get_store)):
        """Remove every image of a person from the store; the change report as for adding."""
        async with entry.write_lock:
            change = await compute(_remove, entry.store, person=person)
        if change["removed"] == 0:
            raise HTTPException(404, f"no images of {person!r} in store {entry.name!r}")
        return answer(change)

    @app.delete("/api/stores/{name}/images/{record_id}", dependencies=writing,
                response_model=ChangeJSON,
                responses={**_errors(e404="No store of that name, or no image with that id in "
                                          "it."), **_INVALID, **_LOCKED, **write_errors})
    async def remove_image(record_id: int, entry: _Served = Depends(get_store)):
        """Remove one image from the store by its record id (a match's `id`)."""
        async with entry.write_lock:
            change = await compute(_remove, entry.store, ids=[record_id])
        if change["removed"] == 0:
            raise HTTPException(404, f"no image with id {record_id} in store {entry.name!r}")
        return answer(change)

    return app


def _name(upload: UploadFile) -> str:
    """What an answer's ``photo`` says: the upload's file name as the client sent it."""
    return upload.filename or "photo"


# -- the work done on worker threads ---------------------------------------------------------------

def _decode(data: bytes, label: str) -> Image.Image:
    try:
        return load_image(data)
    except ImageError as error:
        raise HTTPException(415, f"{label}: {error.reason}") from None


def _save_uploads(uploads: Path, person: str, images: list[Image.Image]) -> list[Path]:
    """Write decoded photos under names the server chooses; their paths, in order."""
    folder = uploads / hashlib.sha256(person.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in images:
        # Re-encode what was decoded: nothing the client sent is written as it came.
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not path.exists():
            atomic.write_bytes(path, data)
        paths.append(path)
    return paths


def _thumbnail(entry: _Served, record_id: int) -> Response:
    record = entry.store.record(record_id)
    if record is None:
        raise HTTPException(404, f"no image with id {record_id} in store {entry.name!r}")
    try:
        image = load_image(record.path)
    except ImageError as error:
        raise HTTPException(410, f"image {record_id} is no longer readable: {error.reason}")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return Response(buffer.getvalue(), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=300"})


def _remove(store: FaceStore, **which) -> dict:
    """The change report, and the images left."""
    report = store.remove(**which)
    return {**report.to_json(folders=False), "images": len(store)}


def _summary(store: FaceStore) -> dict:
    info = store.info()
    return {key: info[key] for key in ("images", "indexed_people", "classifier_people",
                                       "image_size", "weights_origin")}
