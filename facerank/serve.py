"""``facerank serve``: a REST API and a web page over one or more stores.

Built on FastAPI (the optional ``facerank[serve]`` extra); ``import facerank`` never imports it.
Each store is opened once per process. Queries run concurrently; writes to a store (enrol,
remove) queue behind one another, and queries keep answering from a consistent state meanwhile.

Safety: uploads are limited in size (413), recognised by their content rather than their name,
re-encoded before anything is written, and saved under names the server chooses; no path from a
client ever reaches the file system; thumbnails come only from a store's own records; changes
need the bearer token when one is set; the CLI binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from facerank import __version__, atomic
from facerank.errors import FacerankError, ImageError, NoFaceError, StoreLockedError
from facerank.images import load_image
from facerank.store import FaceAnswer, FaceStore, Match

DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024
THUMBNAIL_SIDE = 160
UPLOAD_FOLDER = "uploads"
PAGE = Path(__file__).parent / "web" / "index.html"
NO_FACE_DETAIL = ("no face found in {}: this store answers for faces only; try a photo where a "
                  "face is larger and seen from the front")

# The error answers every photo endpoint may give, for the OpenAPI schema.
_PHOTO_ERRORS = {
    413: {"description": "A photo is larger than the server's upload limit."},
    415: {"description": "A photo cannot be read as an image."},
}
_NO_FACE = {
    422: {"description": "No face found in a photo, where the store's face step skips photos "
                         "without one (`detail`: \"no face found ...\"); or an invalid "
                         "parameter."},
}


class _Served:
    """A store with the lock that queues its writers."""

    def __init__(self, name: str, store: FaceStore):
        self.name = name
        self.store = store
        self.write_lock = threading.Lock()


def create_app(stores: Sequence[str | Path] | dict[str, str | Path], *, token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD) -> FastAPI:
    """The FastAPI application serving ``stores`` (folders; named by folder name or dict key).

    >>> app = create_app(["faces/"], token="s3cret")
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    if not stores:
        raise ValueError("serve needs at least one store")
    named = stores if isinstance(stores, dict) else {Path(s).resolve().name: s for s in stores}
    if len(named) < len(stores):
        raise ValueError("two stores have the same folder name; pass a dict of names to folders")
    served = {name: _Served(name, FaceStore.open(folder)) for name, folder in named.items()}
    page_html = PAGE.read_text("utf-8")  # read once: it is part of the package, not of the store

    app = FastAPI(title="facerank", version=__version__,
                  description="Who is in a photo, and which gallery images are closest.")
    bearer = HTTPBearer(auto_error=False)

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        if token is None:
            return
        if credentials is None:
            raise HTTPException(401, "this endpoint changes the store: send "
                                "'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(403, "wrong token")

    def get_store(name: str) -> _Served:
        if name not in served:
            raise HTTPException(404, f"no store named {name!r}; stores: {', '.join(served)}")
        return served[name]

    async def read_photo(upload: UploadFile, field: str = "photo"):
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"{field} is larger than {max_upload_bytes:,} bytes")
        try:
            return load_image(data)
        except ImageError as error:
            raise HTTPException(415, f"{field} ({upload.filename or 'upload'}): "
                                f"{error.reason}") from None

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Refuse early, before the body is read, when the client says it is too large.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes * 2 + 65536:
            return JSONResponse({"detail": f"request larger than {max_upload_bytes:,} bytes per "
                                           "photo"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(FacerankError)
    async def facerank_error(request: Request, error: FacerankError):
        if isinstance(error, NoFaceError):
            # The store's message names the in-memory upload and a training flag: neither
            # means anything to a client.
            return JSONResponse({"detail": NO_FACE_DETAIL.format("the photo")}, status_code=422)
        status = 409 if isinstance(error, StoreLockedError) else 400
        return JSONResponse({"detail": str(error)}, status_code=status)

    def thumbnail_url(name: str, record_id: int) -> str:
        return f"/api/stores/{name}/thumbnails/{record_id}"

    def match_json(name: str, match: Match) -> dict:
        # The file's name only: the server's folders are none of the client's business.
        return {"rank": match.rank, "person": match.person, "distance": match.distance,
                "id": match.id, "file": Path(match.path).name,
                "thumbnail": thumbnail_url(name, match.id)}

    def face_json(name: str, answer: FaceAnswer) -> dict:
        data = answer.to_json()
        del data["matches"]  # full paths: replaced by closest entries shaped as /closest's
        return {**data, "closest": [match_json(name, m) for m in answer.matches]}

    # -- reading ---------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse(page_html)

    @app.get("/api/health")
    def health():
        """Liveness: the stores this process serves."""
        return {"status": "ok", "version": __version__, "stores": list(served)}

    @app.get("/api/stores")
    def list_stores():
        """Every store with its summary."""
        return [{"name": name, **_summary(s.store)} for name, s in served.items()]

    @app.get("/api/stores/{name}")
    def store_info(entry: _Served = Depends(get_store)):
        """One store: model, preprocessing, index size, images per person."""
        info = entry.store.info()
        info.pop("store", None)  # the server's folder is none of the client's business
        return {"name": entry.name, **info}

    @app.post("/api/stores/{name}/identify", responses={**_PHOTO_ERRORS, **_NO_FACE})
    async def identify(photo: UploadFile = File(...), top_k: int = Query(5, ge=1, le=100),
                       entry: _Served = Depends(get_store)):
        """Who is it: the top people with probabilities from the fine-tuned classifier.

        With a face step, the answer is for the largest face in the photo (`/faces` answers
        for every face). `unknown` is true when the nearest gallery image lies beyond the
        store's calibrated threshold (`facerank calibrate`), null when no threshold has been
        calibrated.
        """
        image = await read_photo(photo)
        matches, predictions = entry.store.query(image, k=1, top_k=top_k)
        nearest = matches[0] if matches else None
        return {"people": [asdict(p) for p in predictions],
                "unknown": entry.store.is_unknown(nearest),
                "nearest_distance": nearest.distance if nearest else None,
                "threshold": entry.store.threshold}

    @app.post("/api/stores/{name}/closest", responses={**_PHOTO_ERRORS, **_NO_FACE})
    async def closest(photo: UploadFile = File(...), k: int = Query(5, ge=1, le=100),
                      entry: _Served = Depends(get_store)):
        """The k nearest gallery images, with distances, people and thumbnail URLs."""
        image = await read_photo(photo)
        matches = entry.store.closest(image, k=k)
        return {"closest": [match_json(entry.name, m) for m in matches]}

    @app.post("/api/stores/{name}/faces", responses=_PHOTO_ERRORS)
    async def faces(photo: UploadFile = File(...), k: int = Query(5, ge=1, le=100),
                    top_k: int = Query(5, ge=1, le=100), entry: _Served = Depends(get_store)):
        """Every face in the photo, largest first: where it is, who it may be, what it is
        closest to.

        `width` and `height` are the photo's, in pixels. Each entry of `faces` has `face` (its
        `box` as [left, top, right, bottom] in those pixels, the detector's `confidence`, and 5
        `landmarks` as [x, y]), the `top_k` `people` with probabilities, the `k` `closest`
        gallery images (shaped as `/closest` gives them), and `unknown` (as in `/identify`).

        A photo without a face is not an error here: `faces` is `[]` when the store's face
        step skips such photos, or holds one answer for the whole image, with `face` null,
        when it uses the whole image (always so for a store without a face step).
        """
        image = await read_photo(photo)
        # Finding and embedding several faces takes a while: off the event loop.
        answers = await run_in_threadpool(entry.store.identify, image, k=k, top_k=top_k)
        return {"width": image.width, "height": image.height,
                "faces": [face_json(entry.name, answer) for answer in answers],
                "threshold": entry.store.threshold}

    @app.post("/api/stores/{name}/verify", responses={**_PHOTO_ERRORS, **_NO_FACE})
    async def verify(photo_a: UploadFile = File(...), photo_b: UploadFile = File(...),
                     entry: _Served = Depends(get_store)):
        """How far apart two faces are; `same` once the store has a calibrated threshold."""
        image_a = await read_photo(photo_a, "photo_a")
        image_b = await read_photo(photo_b, "photo_b")
        try:
            verdict = entry.store.verify(image_a, image_b)
        except NoFaceError:
            # Say which photo: the store's error cannot tell two uploads apart.
            faceless = "photo_a" if not entry.store.find_faces(image_a) else "photo_b"
            raise HTTPException(422, NO_FACE_DETAIL.format(faceless)) from None
        return asdict(verdict)

    @app.get("/api/stores/{name}/thumbnails/{record_id}", responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(record_id: int, entry: _Served = Depends(get_store)):
        """A small JPEG of an indexed image, looked up by record id only."""
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
                        headers={"Cache-Control": "max-age=300"})

    # -- changing --------------------------------------------------------------------------------

    @app.post("/api/stores/{name}/people/{person}/images", dependencies=[Depends(require_token)],
              responses=_PHOTO_ERRORS)
    async def enrol(person: str, photos: list[UploadFile] = File(...),
                    entry: _Served = Depends(get_store)):
        """Add photos of a person (new or existing) to the index."""
        if not person.strip() or "/" in person or person.startswith("."):
            raise HTTPException(422, f"invalid person name {person!r}")
        images = [await read_photo(upload, f"photos[{i}]") for i, upload in enumerate(photos)]
        folder = entry.store.folder / UPLOAD_FOLDER / hashlib.sha256(person.encode()).hexdigest()[:16]
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
        with entry.write_lock:
            report = entry.store.add(paths, person=person)
        return {"person": person, "added": report.added, "unchanged": report.unchanged,
                "images": len(entry.store)}

    @app.delete("/api/stores/{name}/people/{person}", dependencies=[Depends(require_token)])
    def remove_person(person: str, entry: _Served = Depends(get_store)):
        """Remove every image of a person from the index."""
        with entry.write_lock:
            report = entry.store.remove(person=person)
        if report.removed == 0:
            raise HTTPException(404, f"no images of {person!r} in store {entry.name!r}")
        return {"removed": report.removed, "images": len(entry.store)}

    @app.delete("/api/stores/{name}/images/{record_id}", dependencies=[Depends(require_token)])
    def remove_image(record_id: int, entry: _Served = Depends(get_store)):
        """Remove one image from the index by record id."""
        with entry.write_lock:
            report = entry.store.remove(ids=[record_id])
        if report.removed == 0:
            raise HTTPException(404, f"no image with id {record_id} in store {entry.name!r}")
        return {"removed": 1, "images": len(entry.store)}

    return app


def _summary(store: FaceStore) -> dict:
    info = store.info()
    return {key: info[key] for key in ("images", "indexed_people", "classifier_people",
                                       "image_size", "weights_origin")}
