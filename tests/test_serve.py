"""The web API in-process (FastAPI's TestClient): every endpoint and every error path, the
tokens, and model work kept off the event loop. (tests/test_serve_live.py runs the real server.)"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from facerank.model.config import CONFIG_FILE, read_config  # noqa: E402
from facerank.faces.detection import LANDMARKS  # noqa: E402
from facerank.serve import create_app  # noqa: E402
from facerank.store import FaceStore  # noqa: E402

TOKEN = "s3cret"
# Who stands where in the group photo, left to right: ORL gallery photos (all indexed by
# ``store_copy``), enlarged by different amounts.
GROUP = [("s2", "5.pgm", 1.6), ("s4", "5.pgm", 1.5), ("s5", "7.pgm", 1.4)]


@pytest.fixture
def client(store_copy):
    store, gallery = store_copy
    app = create_app([store.folder], token=TOKEN, max_upload_bytes=200_000)
    with TestClient(app) as test_client:
        test_client.store_name = store.folder.name
        test_client.folder = store.folder
        test_client.gallery = gallery
        yield test_client


def _photo(path) -> tuple[str, bytes, str]:
    return ("photo.pgm", path.read_bytes(), "application/octet-stream")


def _auth():
    return {"Authorization": f"Bearer {TOKEN}"}


def group_photo(path: Path, gallery: Path, group=GROUP, size=(640, 480)
                ) -> list[tuple[int, int, int, int]]:
    """Real ORL faces pasted well apart on a grey photo (PNG, so browsers show it too);
    returns where each one was pasted, as (left, top, right, bottom).

    Each face is pasted with its own edge pixels repeated a fifth of its width around it: an
    aligned chip reaches past the edges of a tight ORL crop, which the gallery's chips fill by
    repeating the edge. Without it the tiny test model meets a new background, and some faces
    land nearer someone else; this tests the server, not that.
    """
    canvas = Image.new("RGB", size, (128, 128, 128))
    places, slot = [], size[0] // len(group)
    for number, (person, file, scale) in enumerate(group):
        face = Image.open(gallery / person / file).convert("RGB")
        face = face.resize((round(face.width * scale), round(face.height * scale)),
                           Image.BICUBIC)
        left = number * slot + (slot - face.width) // 2
        top = (size[1] - face.height) // 2 + (20 if number % 2 else -20)
        margin = face.width // 5
        framed = np.pad(np.asarray(face), ((margin, margin), (margin, margin), (0, 0)),
                        mode="edge")
        canvas.paste(Image.fromarray(framed), (left - margin, top - margin))
        places.append((left, top, left + face.width, top + face.height))
    canvas.save(path)
    return places


def _png(image: Image.Image) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ("photo.png", buffer.getvalue(), "image/png")


NO_FACE = Image.new("RGB", (120, 90), (128, 128, 128))  # flat grey: nothing to find


def test_health_stores_info_and_openapi(client):
    assert client.get("/api/health").json()["stores"] == [client.store_name]
    stores = client.get("/api/stores").json()
    assert stores[0]["images"] == 50 and stores[0]["classifier_people"] == 5
    info = client.get(f"/api/stores/{client.store_name}").json()
    assert info["images_per_person"]["s1"] == 10 and "store" not in info
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/stores/{name}/identify", "/api/stores/{name}/classify",
            "/api/stores/{name}/closest", "/api/stores/{name}/faces",
            "/api/stores/{name}/verify", "/api/stores/{name}/people/{person}/images"} <= set(paths)
    assert {"404", "409", "413", "415", "422"} <= set(
        paths["/api/stores/{name}/identify"]["post"]["responses"])
    assert {"413", "415"} <= set(paths["/api/stores/{name}/faces"]["post"]["responses"])
    assert paths["/api/stores/{name}/people/{person}/images"]["post"]["operationId"].startswith(
        "add_images")
    # A write token only: changes may answer 401/403, queries may not.
    assert {"401", "403"} <= set(paths["/api/stores/{name}/people/{person}/images"]["post"]
                                 ["responses"])
    assert "401" not in paths["/api/stores/{name}/identify"]["post"]["responses"]
    assert "<title>facerank</title>" in client.get("/").text


def test_identify_classify_closest_thumbnail_and_verify(client):
    name, photo = client.store_name, client.gallery / "s3" / "2.pgm"
    answer = client.post(f"/api/stores/{name}/identify?k=2&top_k=3",
                         files={"photo": _photo(photo)}).json()
    assert set(answer) == {"photo", "faces", "threshold", "no_face", "error"}
    assert answer["photo"] == "photo.pgm" and answer["error"] is None
    assert answer["threshold"] is None  # not calibrated yet
    [face] = answer["faces"]
    people = face["people"]
    assert len(people) == 3 and people[0]["probability"] >= people[1]["probability"]
    assert face["unknown"] is None and len(face["matches"]) == 2
    assert face["matches"][0]["distance"] < 1e-3
    classified = client.post(f"/api/stores/{name}/classify?top_k=3",
                             files={"photo": _photo(photo)}).json()
    assert classified == {"photo": "photo.pgm", "people": people, "no_face": False,
                          "error": None}
    closest = client.post(f"/api/stores/{name}/closest?k=4", files={"photo": _photo(photo)}).json()
    assert set(closest) == {"photo", "matches", "no_face", "error"}
    matches = closest["matches"]
    assert len(matches) == 4 and matches[:2] == face["matches"]
    assert Path(matches[0]["path"]).name == "2.pgm" and matches[0]["person"] == "s3"
    assert matches[0]["distance"] < 1e-3
    # The thumbnail's address is built from the match's id, as the page does.
    thumb = client.get(f"/api/stores/{name}/thumbnails/{matches[0]['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 160
    same = client.post(f"/api/stores/{name}/verify",
                       files={"photo_a": _photo(photo), "photo_b": _photo(photo)}).json()
    assert set(same) == {"distance", "threshold", "same"} and same["distance"] < 1e-3
    assert same["same"] is None  # not calibrated yet


def test_add_and_remove_need_the_token_and_change_answers(client, tmp_path):
    name = client.store_name
    newcomer = Image.open(client.gallery / "s5" / "1.pgm").transpose(Image.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    newcomer.save(buffer, format="PNG")
    files = [("photos", ("new.png", buffer.getvalue(), "image/png"))]
    url = f"/api/stores/{name}/people/visitor/images"
    assert client.post(url, files=files).status_code == 401
    for invalid in (".hidden", "back%5Cslash", "%20"):
        refused = client.post(f"/api/stores/{name}/people/{invalid}/images", files=files,
                              headers=_auth())
        assert refused.status_code == 422 and "invalid person name" in refused.json()["detail"]
    assert client.post(url, files=files,
                       headers={"Authorization": "Bearer nope"}).status_code == 403
    added = client.post(url, files=files, headers=_auth())
    assert added.status_code == 200
    change = added.json()  # the store's change report, as `facerank index add --json` prints
    assert (change["added"], change["unchanged"], change["images"]) == (1, 0, 51)
    assert change["skipped"] == [] and change["no_face"] == []
    match = client.post(f"/api/stores/{name}/closest?k=1",
                        files={"photo": ("x.png", buffer.getvalue(), "image/png")}).json()
    assert match["matches"][0]["person"] == "visitor"
    again = client.post(url, files=files, headers=_auth()).json()  # the same photo again
    assert (again["added"], again["unchanged"], again["images"]) == (0, 1, 51)

    record_id = match["matches"][0]["id"]
    assert client.delete(f"/api/stores/{name}/images/{record_id}").status_code == 401
    removed = client.delete(f"/api/stores/{name}/images/{record_id}", headers=_auth()).json()
    assert (removed["removed"], removed["added"], removed["images"]) == (1, 0, 50)
    assert client.delete(f"/api/stores/{name}/images/{record_id}",
                         headers=_auth()).status_code == 404
    assert client.delete(f"/api/stores/{name}/people/s2", headers=_auth()).json()["removed"] == 10
    assert client.delete(f"/api/stores/{name}/people/nobody", headers=_auth()).status_code == 404


@pytest.mark.parametrize("files,status", [
    ({}, 422),                                                                  # no file
    ({"photo": ("a.jpg", b"<html>not an image</html>", "image/jpeg")}, 415),    # lies about type
    ({"photo": ("a.png", b"", "image/png")}, 415),                              # empty
    ({"photo": ("big.png", bytes(300_000), "image/png")}, 413),                 # too large
])
def test_bad_uploads_get_clear_errors(client, files, status):
    response = client.post(f"/api/stores/{client.store_name}/identify", files=files)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_unknown_store_and_thumbnail(client):
    photo = {"photo": _photo(client.gallery / "s1" / "1.pgm")}
    response = client.post("/api/stores/elsewhere/identify", files=photo)
    assert response.status_code == 404 and client.store_name in response.json()["detail"]
    assert client.get(f"/api/stores/{client.store_name}/thumbnails/99999").status_code == 404
    # Thumbnails are looked up by record id only: a path never reaches the file system.
    sneaky = client.get(f"/api/stores/{client.store_name}/thumbnails/..%2F..%2Fetc%2Fpasswd")
    assert sneaky.status_code in (404, 422) and b"root:" not in sneaky.content


def test_content_is_sniffed_not_trusted_from_the_name(client):
    image = Image.fromarray(np.full((64, 64, 3), 90, np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    response = client.post(f"/api/stores/{client.store_name}/identify",
                           files={"photo": ("holiday.gif", buffer.getvalue(), "text/plain")})
    assert response.status_code == 200


def test_queries_stay_correct_while_adding(client):
    import concurrent.futures

    name, photo = client.store_name, client.gallery / "s4" / "3.pgm"
    files_for = lambda: {"photo": _photo(photo)}  # noqa: E731
    extra = []
    for i in range(6):
        buffer = io.BytesIO()
        Image.open(client.gallery / "s1" / f"{i + 1}.pgm").rotate(5).save(buffer, format="PNG")
        extra.append(buffer.getvalue())

    def add(data):
        return client.post(f"/api/stores/{name}/people/late/images", headers=_auth(),
                           files=[("photos", ("p.png", data, "image/png"))]).status_code

    def query(_):
        answer = client.post(f"/api/stores/{name}/closest?k=1", files=files_for()).json()
        return Path(answer["matches"][0]["path"]).name

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        writes = [pool.submit(add, data) for data in extra]
        reads = list(pool.map(query, range(24)))
    assert [w.result() for w in writes] == [200] * 6
    assert reads == ["3.pgm"] * 24


def test_several_stores_are_served_side_by_side(store_copy, trained, tmp_path):
    import shutil

    store, gallery = store_copy
    second = tmp_path / "second"
    shutil.copytree(store.folder, second)
    app = create_app({"first": store.folder, "second": second})
    with TestClient(app) as client:
        assert [s["name"] for s in client.get("/api/stores").json()] == ["first", "second"]
        assert client.delete("/api/stores/second/people/s1").json()["removed"] == 10
        photo = {"photo": _photo(gallery / "s1" / "1.pgm")}
        first = client.post("/api/stores/first/closest?k=1", files=photo).json()["matches"][0]
        other = client.post("/api/stores/second/closest?k=1", files=photo).json()["matches"][0]
        assert first["person"] == "s1" and other["person"] != "s1"
    with pytest.raises(ValueError, match="same folder name"):
        create_app([store.folder, tmp_path / "x" / store.folder.name])


def test_identify_answers_every_face_of_a_group_photo(client, tmp_path):
    name = client.store_name
    places = group_photo(tmp_path / "group.png", client.gallery)
    photo = {"photo": ("group.png", (tmp_path / "group.png").read_bytes(), "image/png")}
    answer = client.post(f"/api/stores/{name}/identify?k=3&top_k=2", files=photo)
    assert answer.status_code == 200, answer.text
    answer = answer.json()
    assert answer["photo"] == "group.png" and answer["threshold"] is None
    faces = answer["faces"]
    assert len(faces) == len(GROUP)
    boxes = [found["face"]["box"] for found in faces]
    areas = [(right - left) * (bottom - top) for left, top, right, bottom in boxes]
    assert areas == sorted(areas, reverse=True)  # largest first
    # largest=true, classify and closest answer for the largest face: the first.
    largest = client.post(f"/api/stores/{name}/identify?k=3&top_k=2&largest=true",
                          files=photo).json()
    assert largest["faces"] == faces[:1]
    people = client.post(f"/api/stores/{name}/classify?top_k=2", files=photo).json()["people"]
    assert people == faces[0]["people"]
    matches = client.post(f"/api/stores/{name}/closest?k=3", files=photo).json()["matches"]
    assert matches == faces[0]["matches"]
    # /faces: the same boxes and landmarks, without the network, and the photo's size.
    detected = client.post(f"/api/stores/{name}/faces", files=photo).json()
    assert (detected["photo"], detected["width"], detected["height"]) == ("group.png", 640, 480)
    assert detected["faces"] == [found["face"] for found in faces]
    # Left to right, as pasted: each box in the photo, around the face pasted there.
    ordered = sorted(faces, key=lambda found: found["face"]["box"][0])
    for found, (person, _, _), place in zip(ordered, GROUP, places):
        left, top, right, bottom = found["face"]["box"]
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 480
        centre = ((left + right) / 2, (top + bottom) / 2)
        assert place[0] < centre[0] < place[2] and place[1] < centre[1] < place[3]
        assert list(found["face"]["landmarks"]) == list(LANDMARKS)
        assert 0 < found["face"]["confidence"]
        assert len(found["people"]) == 2 and len(found["matches"]) == 3
        assert found["unknown"] is None  # not calibrated yet
        assert found["matches"][0]["person"] == person, found["matches"]


@pytest.fixture
def skipping_client(tmp_path, trained, gallery):
    """The session's model with the policy "skip" for photos without a face; s1 indexed."""
    folder = tmp_path / "skipping"
    shutil.copytree(trained[0], folder)
    config = read_config(folder)
    skip = {**config.to_json(), "faces": {**config.faces.to_json(), "no_face": "skip"}}
    (folder / CONFIG_FILE).write_text(json.dumps(skip))
    FaceStore.open(folder).add(sorted((gallery / "s1").glob("*.pgm"))[:4], person="s1")
    with TestClient(create_app([folder])) as test_client:
        test_client.store_name = folder.name
        yield test_client


def test_a_photo_without_a_face_under_the_whole_image_policy(client):
    # The session store's policy: the whole image is answered for, with no face.
    name = client.store_name
    answer = client.post(f"/api/stores/{name}/identify", files={"photo": _png(NO_FACE)}).json()
    [whole] = answer["faces"]
    assert whole["face"] is None and whole["people"] and whole["matches"] and answer["no_face"]
    classified = client.post(f"/api/stores/{name}/classify", files={"photo": _png(NO_FACE)})
    assert classified.status_code == 200 and classified.json()["people"] == whole["people"]
    detected = client.post(f"/api/stores/{name}/faces", files={"photo": _png(NO_FACE)}).json()
    assert detected["faces"] == [] and (detected["width"], detected["height"]) == (120, 90)


def test_a_photo_without_a_face_under_the_skip_policy(skipping_client, gallery):
    client, name = skipping_client, skipping_client.store_name
    answer = client.post(f"/api/stores/{name}/identify", files={"photo": _png(NO_FACE)})
    assert answer.status_code == 200 and answer.json()["faces"] == []
    assert answer.json()["no_face"] is True
    for endpoint in ("classify", "closest"):
        refused = client.post(f"/api/stores/{name}/{endpoint}", files={"photo": _png(NO_FACE)})
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert detail.startswith("no face found in the photo") and "\n" not in detail
    refused = client.post(f"/api/stores/{name}/verify",
                          files={"photo_a": _photo(gallery / "s1" / "1.pgm"),
                                 "photo_b": _png(NO_FACE)})
    assert refused.status_code == 422 and refused.json()["detail"].startswith(
        "no face found in photo_b")
    # A face is still answered for, by the same store.
    found = client.post(f"/api/stores/{name}/identify",
                        files={"photo": _photo(gallery / "s1" / "1.pgm")}).json()["faces"]
    assert [face["matches"][0]["person"] for face in found] == ["s1"]


def test_identify_answers_from_the_classifier_before_the_index_is_built(trained, gallery,
                                                                        tmp_path):
    # A store just trained: the classifier knows the people, the index holds nothing yet.
    folder = tmp_path / "unbuilt"
    shutil.copytree(trained[0], folder)
    photo = {"photo": _photo(gallery / "s2" / "1.pgm")}
    with TestClient(create_app([folder])) as client:
        answer = client.post(f"/api/stores/{folder.name}/identify", files=photo)
        assert answer.status_code == 200, answer.text
        [face] = answer.json()["faces"]
        assert face["matches"] == [] and face["unknown"] is None
        people = client.post(f"/api/stores/{folder.name}/classify", files=photo).json()["people"]
        assert face["people"] == people and len(people) == 5
        # Nearest gallery images need the index: the answer says how to build it.
        refused = client.post(f"/api/stores/{folder.name}/closest", files=photo)
        assert refused.status_code == 409 and "facerank index build" in refused.json()["detail"]


def test_a_request_body_over_two_photos_worth_is_refused_whole(client):
    # Each photo under the 200 kB limit, the three together over the body's 2 x 200 kB + 64 kB.
    photos = [("photos", (f"{i}.png", bytes(190_000), "image/png")) for i in range(3)]
    response = client.post(f"/api/stores/{client.store_name}/people/many/images", files=photos,
                           headers=_auth())
    assert response.status_code == 413, response.text
    assert response.json()["detail"].startswith("request body larger than 465,536 bytes")
    assert response.headers["connection"] == "close"


# -- tokens for reading ----------------------------------------------------------------------------

READ_TOKEN = "r3ader"


@pytest.fixture
def guarded(store_copy):
    store, gallery = store_copy
    app = create_app([store.folder], token=TOKEN, read_token=READ_TOKEN)
    with TestClient(app) as test_client:
        test_client.store_name = store.folder.name
        test_client.gallery = gallery
        yield test_client


def test_a_read_token_guards_every_answer_but_health_and_the_page(guarded):
    client, name = guarded, guarded.store_name
    photo = (guarded.gallery / "s3" / "2.pgm").read_bytes()
    one = lambda field="photo": {field: ("p.pgm", photo)}  # noqa: E731
    record_id = client.post(f"/api/stores/{name}/closest?k=1", files=one(),
                            headers={"Authorization": f"Bearer {READ_TOKEN}"}
                            ).json()["matches"][0]["id"]
    answers = [
        ("GET", "/api/stores", {}), ("GET", "/api/stores/{name}", {}),
        ("GET", "/api/stores/{name}/thumbnails/{record_id}", {}),
        ("POST", "/api/stores/{name}/identify", {"files": one}),
        ("POST", "/api/stores/{name}/classify", {"files": one}),
        ("POST", "/api/stores/{name}/closest", {"files": one}),
        ("POST", "/api/stores/{name}/faces", {"files": one}),
        ("POST", "/api/stores/{name}/verify",
         {"files": lambda: {**one("photo_a"), **one("photo_b")}}),
    ]
    paths = client.get("/openapi.json").json()["paths"]
    for method, route, options in answers:
        url = route.replace("{name}", name).replace("{record_id}", str(record_id))

        def send(token=None):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            files = options["files"]() if "files" in options else None
            return client.request(method, url, files=files, headers=headers)

        refused = send()
        assert refused.status_code == 401, (route, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert send("nope").status_code == 403, route
        assert send(READ_TOKEN).status_code == 200, route
        assert send(TOKEN).status_code == 200, route  # the write token reads too
        assert {"401", "403"} <= set(paths[route][method.lower()]["responses"]), route
    # Open to all: liveness and the page itself (which then asks for the token).
    assert client.get("/api/health").status_code == 200
    assert "<title>facerank</title>" in client.get("/").text
    assert "401" not in paths["/api/health"]["get"]["responses"]
    # The read token changes nothing.
    add = client.post(f"/api/stores/{name}/people/visitor/images",
                      files={"photos": ("p.pgm", photo)},
                      headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert add.status_code == 403


def test_tokens_and_bounds_are_checked_when_the_app_is_made(store_copy):
    store, _ = store_copy
    with pytest.raises(ValueError, match="set a write token too"):
        create_app([store.folder], read_token=READ_TOKEN)
    with pytest.raises(ValueError, match="max_concurrent must be at least 1"):
        create_app([store.folder], max_concurrent=0)


# -- never blocking --------------------------------------------------------------------------------

class Gate:
    """Holds every call of a ``FaceStore`` method until released, counting the calls inside."""

    def __init__(self, monkeypatch, method: str):
        original = getattr(FaceStore, method)
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.inside = self.most_inside = 0
        count = threading.Lock()

        def held(store, *args, **kwargs):
            with count:
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
            self.entered.release()
            try:
                # Released by the test, or after 20 s: a blocked loop then shows as slowness
                # in an assertion rather than as a hung suite.
                self.release.wait(20)
                return original(store, *args, **kwargs)
            finally:
                with count:
                    self.inside -= 1

        monkeypatch.setattr(FaceStore, method, held)

    def wait_for(self, calls: int) -> None:
        for _ in range(calls):
            assert self.entered.acquire(timeout=30), "the call never reached the store"


def _post_photo(client, url, path):
    return client.post(url, files={"photo": ("p.pgm", path.read_bytes())})


def test_health_answers_while_model_work_is_held_and_work_is_bounded(store_copy, monkeypatch):
    store, gallery = store_copy
    gate = Gate(monkeypatch, "closest")
    with TestClient(create_app([store.folder], max_concurrent=2)) as client, \
            ThreadPoolExecutor(5) as pool:
        url = f"/api/stores/{store.folder.name}/closest?k=1"
        queries = [pool.submit(_post_photo, client, url, gallery / "s2" / f"{n}.pgm")
                   for n in range(1, 6)]
        gate.wait_for(2)
        time.sleep(0.3)  # time for a third call to get in, were the bound not kept
        inside = gate.inside
        started = time.perf_counter()
        health = client.get("/api/health")
        elapsed = time.perf_counter() - started
        held_meanwhile = not gate.release.is_set()
        gate.release.set()
        answers = [query.result() for query in queries]
    assert health.status_code == 200 and held_meanwhile and elapsed < 1.0, elapsed
    assert inside == 2 and gate.most_inside == 2  # max_concurrent, never more
    assert [Path(a.json()["matches"][0]["path"]).name for a in answers] == \
        [f"{n}.pgm" for n in range(1, 6)]


def test_queued_writers_hold_no_worker_and_take_turns(store_copy, monkeypatch):
    store, gallery = store_copy
    gate = Gate(monkeypatch, "add")
    with TestClient(create_app([store.folder], max_concurrent=2)) as client, \
            ThreadPoolExecutor(3) as pool:
        name = store.folder.name

        def add(n):
            photo = _png(Image.open(gallery / "s5" / f"{n}.pgm").rotate(8))
            return client.post(f"/api/stores/{name}/people/late/images",
                               files=[("photos", photo)])

        writes = [pool.submit(add, n) for n in (1, 2, 3)]
        gate.wait_for(1)
        time.sleep(0.3)  # time for the other writers to reach the store, were they not queued
        inside = gate.inside
        # One slot is the writer's; the queued writers hold none, so a query gets the other.
        query = _post_photo(client, f"/api/stores/{name}/closest?k=1", gallery / "s4" / "3.pgm")
        held_meanwhile = not gate.release.is_set()
        gate.release.set()
        statuses = [write.result().status_code for write in writes]
        images = client.get(f"/api/stores/{name}").json()["images"]
    assert query.status_code == 200 and held_meanwhile
    assert Path(query.json()["matches"][0]["path"]).name == "3.pgm"
    assert inside == 1 and gate.most_inside == 1  # one writer at a time
    assert statuses == [200] * 3 and images == 53  # each waited its turn: no 409


# -- one answer, whoever asks ----------------------------------------------------------------------

def test_rest_cli_and_library_give_one_photo_the_same_json(client, tmp_path):
    """The REST API, `facerank identify --json` and the library answer a photo with the same
    PhotoAnswer.to_json(); only `photo` differs (the upload's name, the path given), and REST
    names stored files by their file name, not the server's folders."""
    from typer.testing import CliRunner

    from facerank.cli.app import app as cli
    from facerank.store import PhotoAnswer

    name, folder = client.store_name, client.folder
    path = tmp_path / "group.png"
    group_photo(path, client.gallery)
    rest = client.post(f"/api/stores/{name}/identify?k=3&top_k=2",
                       files={"photo": ("group.png", path.read_bytes(), "image/png")})
    assert rest.status_code == 200, rest.text
    rest = rest.json()
    assert rest["photo"] == "group.png" and len(rest["faces"]) == len(GROUP)

    store = FaceStore.open(folder)
    library = PhotoAnswer(photo=str(path), faces=store.identify(path, k=3, top_k=2),
                          threshold=store.threshold).to_json()
    [each] = [answer.to_json() for answer in store.identify_each([path], k=3, top_k=2)]
    result = CliRunner().invoke(cli, ["identify", str(path), "--store", str(folder), "-k", "3",
                                      "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(text) for text in result.stdout.splitlines() if text.strip()]
    for answer in (library, each, line):
        assert answer["photo"] == str(path)
        for face in answer["faces"]:
            for match in face["matches"]:
                assert Path(match["path"]).is_absolute()
                match["path"] = Path(match["path"]).name
        assert {**answer, "photo": "group.png"} == rest

    # The other questions too: each CLI line and REST answer is one dataclass's to_json.
    photo = client.gallery / "s3" / "2.pgm"
    for question, options in (("classify", ["--top-k", "2"]), ("closest", ["-k", "3"]),
                              ("faces", [])):
        query = {"classify": "?top_k=2", "closest": "?k=3", "faces": ""}[question]
        rest = client.post(f"/api/stores/{name}/{question}{query}",
                           files={"photo": _photo(photo)})
        assert rest.status_code == 200, rest.text
        result = CliRunner().invoke(cli, [question, str(photo), "--store", str(folder), *options,
                                          "--json"])
        assert result.exit_code == 0, result.output
        [line] = [json.loads(text) for text in result.stdout.splitlines() if text.strip()]
        for match in line.get("matches", []):
            match["path"] = Path(match["path"]).name
        assert {**line, "photo": "photo.pgm"} == rest.json(), question
