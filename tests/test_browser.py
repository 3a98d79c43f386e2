"""End to end in a real headless Chromium: upload a photo, see the bar chart and the neighbours;
upload a group photo, see a box per face, click one, see that face's answer; a bad upload
clears the last answer; a server with a read token is used with it.

Needs Debian's chromium (`apt-get install chromium`; `.ci/run` installs it) and the Playwright
package (no browser download: it drives /usr/bin/chromium). Skipped where either is missing,
unless FACERANK_REQUIRE_BROWSER=1 (as in CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from test_serve import GROUP, group_photo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("FACERANK_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("FACERANK_ARTIFACTS", Path(__file__).parent / "artifacts"))


def _missing(reason: str):
    if REQUIRED:
        pytest.fail(f"browser test required but {reason}")
    pytest.skip(reason)


def _serve(app):
    """Run ``app`` on a free loopback port in a thread; yields its URL."""
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def server_url(store_copy):
    from facerank.serve import create_app

    yield from _serve(create_app([store_copy[0].folder]))


READ_TOKEN, WRITE_TOKEN = "reader-token", "writer-token"


@pytest.fixture
def guarded_url(store_copy):
    """A server whose answers need a token."""
    from facerank.serve import create_app

    yield from _serve(create_app([store_copy[0].folder], token=WRITE_TOKEN,
                                 read_token=READ_TOKEN))


def _playwright():
    if CHROMIUM is None:
        _missing("chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    return sync_playwright


def _launch(playwright):
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"])


# Every thumbnail of the closest-images grid has arrived and decoded.
THUMBNAILS_SHOWN = (
    "document.querySelectorAll('#closest img').length > 0 && "
    "[...document.querySelectorAll('#closest img')].every(i => i.complete && i.naturalWidth > 0)")

# What the page shows of an answer: bars, neighbours, and whether their cards are visible.
SHOWN = """() => ({
    bars: document.querySelectorAll('.bar-row').length,
    closest: document.querySelectorAll('#closest figure').length,
    results: !document.getElementById('results').hidden,
    photo: !document.getElementById('photo-card').hidden})"""


def test_upload_shows_the_right_person_first_and_the_closest_faces(server_url, store_copy,
                                                                   trained):
    sync_playwright = _playwright()
    store, _ = store_copy
    split = json.loads((trained[0] / "train" / "split.json").read_text())
    # A photo of a person the page must name: one the model learnt from (the session's tiny
    # model names held-out photos right only most of the time, and which ones varies from run
    # to run), in which the face step finds a face, the person read from its folder.
    photo, truth = next((photo, person) for photo, person in split["train"]
                        if store.find_faces(photo))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server_url)
            page.wait_for_selector("#store option", state="attached")
            page.set_input_files("#photo", photo)
            page.wait_for_selector(".bar-row")
            page.wait_for_function(THUMBNAILS_SHOWN)
            names = page.locator(".bar-name").all_inner_texts()
            widths = page.eval_on_selector_all(".bar", "bars => bars.map(b => b.getBoundingClientRect().width)")
            status = page.inner_text("#status")
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
            captions = page.locator("#closest figcaption strong").all_inner_texts()
        finally:
            browser.close()
    assert len(names) == 5 and names[0] == truth, (names, truth)
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    assert truth in status
    assert len(captions) == 8 and truth in captions[0]


def test_a_group_photo_gets_a_box_per_face_and_each_face_its_own_answer(server_url, store_copy,
                                                                        tmp_path):
    sync_playwright = _playwright()
    store, gallery = store_copy
    photo = tmp_path / "group.png"
    group_photo(photo, gallery)  # 640 x 480
    # What the page asks, and must show: every face's answer, as /identify gives it.
    expected = httpx.post(f"{server_url}/api/stores/{store.folder.name}/identify?k=8&top_k=5",
                          files={"photo": ("group.png", photo.read_bytes(), "image/png")},
                          timeout=60).json()
    faces = expected["faces"]
    assert len(faces) == len(GROUP)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(server_url)
            page.wait_for_selector("#store option", state="attached")
            page.set_input_files("#photo", str(photo))
            page.wait_for_selector("#stage .face-box")
            page.wait_for_function("document.getElementById('picture').complete && "
                                   "document.getElementById('picture').naturalWidth > 0")
            boxes = page.locator("#stage .face-box")
            count = boxes.count()
            labels = page.locator("#stage .face-label").all_inner_texts()
            pressed_at_first = boxes.evaluate_all(
                "boxes => boxes.map(box => box.getAttribute('aria-pressed'))")
            chart_at_first = page.locator(".bar-name").first.inner_text()
            # Where the second box sits on the photo, as shares of its width and height.
            second = page.locator('#stage .face-box[data-index="1"]')
            drawn = second.evaluate("""box => {
                const s = box.parentElement.getBoundingClientRect();
                const b = box.getBoundingClientRect();
                return [(b.left - s.left) / s.width, (b.top - s.top) / s.height,
                        (b.right - s.left) / s.width, (b.bottom - s.top) / s.height]; }""")
            second.click()
            page.wait_for_function("document.querySelector('#stage .face-box[data-index=\"1\"]')"
                                   ".getAttribute('aria-pressed') === 'true'")
            page.wait_for_function(THUMBNAILS_SHOWN)
            names = page.locator(".bar-name").all_inner_texts()
            captions = page.locator("#closest figcaption strong").all_inner_texts()
            status = page.inner_text("#status")
            page.screenshot(path=str(ARTIFACTS / "serve-page-group.png"), full_page=True)

            # A photo with no face (as a store that skips such photos answers): a clear
            # message, and nothing left of the group photo's answers.
            page.route(re.compile(r"/identify\?"), lambda route: route.fulfill(json={
                "photo": "blank.png", "faces": [], "threshold": None, "error": None}))
            blank = tmp_path / "blank.png"
            Image.new("RGB", (120, 90), (128, 128, 128)).save(blank)
            page.set_input_files("#photo", str(blank))
            page.wait_for_function("document.getElementById('status').textContent"
                                   ".startsWith('No face found in this photo')")
            emptied = page.evaluate("""() => ({
                boxes: document.querySelectorAll('#stage .face-box').length,
                bars: document.querySelectorAll('.bar-row').length,
                closest: document.querySelectorAll('#closest figure').length})""")
            results_shown = page.locator("#results").is_visible()
            page.screenshot(path=str(ARTIFACTS / "serve-page-no-face.png"), full_page=True)
        finally:
            browser.close()
    assert count == len(faces)
    assert labels == [face["people"][0]["person"] for face in faces]  # no threshold: no unknown
    assert pressed_at_first == ["true"] + ["false"] * (len(faces) - 1)  # the largest face
    assert chart_at_first == faces[0]["people"][0]["person"]
    left, top, right, bottom = faces[1]["face"]["box"]
    share = [left / 640, top / 480, right / 640, bottom / 480]
    assert all(abs(a - b) < 0.01 for a, b in zip(drawn, share)), (drawn, share)
    assert names == [p["person"] for p in faces[1]["people"]]
    assert captions[0] == f"#1 {faces[1]['matches'][0]['person']}"
    assert status.startswith("Face 2: ") and faces[1]["people"][0]["person"] in status
    assert emptied == {"boxes": 0, "bars": 0, "closest": 0} and not results_shown


def test_a_failed_upload_clears_the_previous_answer(server_url, store_copy, tmp_path):
    sync_playwright = _playwright()
    _, gallery = store_copy
    not_a_photo = tmp_path / "holiday.jpg"
    not_a_photo.write_text("a text file, whatever its name says")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server_url)
            page.wait_for_selector("#store option", state="attached")
            page.set_input_files("#photo", str(gallery / "s2" / "3.pgm"))
            page.wait_for_selector(".bar-row")
            page.wait_for_function(THUMBNAILS_SHOWN)
            before = page.evaluate(SHOWN)
            page.set_input_files("#photo", str(not_a_photo))
            page.wait_for_selector("#status.error")
            status = page.inner_text("#status")
            after = page.evaluate(SHOWN)
            page.screenshot(path=str(ARTIFACTS / "serve-page-bad-upload.png"), full_page=True)
        finally:
            browser.close()
    assert before == {"bars": 5, "closest": 8, "results": True, "photo": True}, before
    # The server's 415, naming the upload; nothing of the previous photo's answer under it.
    assert "holiday.jpg" in status and "image" in status.lower(), status
    assert after == {"bars": 0, "closest": 0, "results": False, "photo": False}, after



def test_the_page_sends_a_read_token_typed_in_or_given_in_its_address(guarded_url, store_copy):
    sync_playwright = _playwright()
    store, gallery = store_copy
    photo = str(gallery / "s4" / "2.pgm")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            # Without a token: the server refuses, the page says so and shows the token field.
            page.goto(guarded_url)
            page.wait_for_selector("#status.error")
            refused = page.inner_text("#status")
            field_shown = page.locator("#token").is_visible()
            listed_before = page.locator("#store option").count()
            # Typed in: the stores are listed, and an upload answered, thumbnails included.
            page.fill("#token", READ_TOKEN)
            page.press("#token", "Enter")
            page.wait_for_selector("#store option", state="attached")
            page.set_input_files("#photo", photo)
            page.wait_for_selector(".bar-row")
            page.wait_for_function(THUMBNAILS_SHOWN)
            typed = page.evaluate(SHOWN)

            # Given in the address: answered from the start, no field needed.
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"{guarded_url}/#token={READ_TOKEN}")
            page.wait_for_selector("#store option", state="attached")
            page.set_input_files("#photo", photo)
            page.wait_for_selector(".bar-row")
            page.wait_for_function(THUMBNAILS_SHOWN)
            linked = page.evaluate(SHOWN)
            field_hidden = not page.locator("#token").is_visible()
            page.screenshot(path=str(ARTIFACTS / "serve-page-read-token.png"), full_page=True)
        finally:
            browser.close()
    assert "needs an access token" in refused and field_shown and listed_before == 0
    assert typed == linked == {"bars": 5, "closest": 8, "results": True, "photo": True}
    assert field_hidden
