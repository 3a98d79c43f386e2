"""A data-quality report on a gallery: what would hurt training or retrieval, before it does.

Finds unreadable files, exact and near-duplicate images (a duplicate across two people is a
likely mislabel), people with too few images to be split, extreme image sizes, and, when a
trained store is given, images whose nearest neighbours all belong to another person. With a
face step (the store's, else dlib's HOG detector where the ``faces`` extra is installed) it also
names the photos in which no face is found and those with several faces: notes while no-face
photos are used whole, a finding when the store's policy skips them.

Likely mislabels are only as good as the model's neighbours, so the store's model is measured
first, the way ``calibrate`` measures it (true accepts at ``MODEL_CHECK_FAR`` false accepts on
its held-out split). Where it barely separates people, the findings are kept but qualified (each
says so, and ``DoctorReport.caveat`` says why): a weak model still catches a photo moved between
clear-cut people, yet also flags photos it merely gets wrong, so a person should look.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from facerank.errors import ImageError
from facerank.faces.detection import FaceFinder, face_step
from facerank.data.gallery import scan_gallery
from facerank.data.images import load_image

#: Images smaller than this on a side carry too little face to learn from.
MIN_SIDE = 24
#: Wider or taller than this ratio is more likely a banner or a strip than a face photo.
MAX_ASPECT = 4.0
#: Difference hashes of 256 bits closer than this are reported as near-duplicates. On ORL, JPEG
#: re-encodings at quality 70 of resized copies differed by at most 9 bits, while the closest two
#: distinct photos (same person, same pose) differed by 10.
HASH_SIDE = 16
NEAR_DUPLICATE_BITS = 10
#: The false-accept rate the store's model is checked at before its neighbours are trusted.
MODEL_CHECK_FAR = 0.01


@dataclass
class Finding:
    kind: str  # folder, unreadable, duplicate, near_duplicate, too_few, extreme_size,
               # likely_mislabel, no_face (only where the face step skips such photos)
    paths: list[str]
    detail: str


@dataclass
class DoctorReport:
    gallery: str
    images: int
    people: int
    findings: list[Finding] = field(default_factory=list)
    faces: str = ""                                         # the face step used, in words
    no_face: list[str] = field(default_factory=list)        # photos with no face found
    several_faces: list[str] = field(default_factory=list)  # the largest is taken as the person
    # How well the store's model separates people (tar, far, source, same_pairs, different_pairs;
    # or the reason it could not be measured); None without a store.
    model_check: dict | None = None
    caveat: str | None = None  # why the likely_mislabel findings need a person's eye, if they do

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    def to_json(self) -> dict:
        summary = defaultdict(int)
        for finding in self.findings:
            summary[finding.kind] += 1
        return {**asdict(self), "summary": dict(summary)}


def difference_hash(image: Image.Image) -> np.ndarray:
    """A 256-bit dHash, packed in 32 bytes: robust to re-encoding and resizing, not to edits."""
    small = np.asarray(image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.BILINEAR),
                       dtype=np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1])


def diagnose(gallery: str | Path, *, store=None, min_images: int = 2,
             neighbours: int = 3) -> DoctorReport:
    """Check a gallery; with a ``FaceStore``, also look for likely mislabelled images.

    >>> report = facerank.diagnose("GALLERY/")
    >>> report.images, [f.detail for f in report.findings if f.kind == "duplicate"]
    (50, [])
    """
    scanned = scan_gallery(gallery)
    finder = store.faces if store is not None else FaceFinder(face_step("auto"), size=64)
    report = DoctorReport(gallery=str(scanned.root), images=len(scanned.images),
                          people=len(scanned.people), faces=finder.step.describe())
    for path, reason in scanned.problems:
        report.findings.append(Finding("folder", [path], reason))

    readable: list[tuple[str, str, Image.Image]] = []
    by_digest: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item in scanned.images:
        try:
            data = item.path.read_bytes()
            image = load_image(data)
        except ImageError as error:
            report.findings.append(Finding("unreadable", [str(item.path)], error.reason))
            continue
        except OSError as error:
            report.findings.append(Finding("unreadable", [str(item.path)],
                                           error.strerror or str(error)))
            continue
        digest = hashlib.sha256(data).hexdigest()
        by_digest[digest].append((str(item.path), item.person))
        faces = finder.find(image, key=digest, every=False)  # as training and indexing do
        if finder.step.enabled and not faces:
            report.no_face.append(str(item.path))
            if finder.step.no_face == "skip":
                report.findings.append(Finding("no_face", [str(item.path)], "no face found: "
                                               "training and indexing skip this photo"))
        elif len(faces) > 1:
            report.several_faces.append(str(item.path))
        readable.append((str(item.path), item.person, image, faces))
        width, height = image.size
        if min(width, height) < MIN_SIDE or max(width, height) / min(width, height) > MAX_ASPECT:
            report.findings.append(Finding("extreme_size", [str(item.path)],
                                           f"{width}x{height} pixels"))

    exact_pairs = set()
    for copies in by_digest.values():
        if len(copies) > 1:
            people = sorted({person for _, person in copies})
            detail = ("the same file under different people: " + ", ".join(people)
                      + " (likely a mislabel)") if len(people) > 1 else "the same file twice"
            report.findings.append(Finding("duplicate", [p for p, _ in copies], detail))
            exact_pairs |= {frozenset((a, b)) for a, _ in copies for b, _ in copies if a != b}

    for i, j, bits in _near_pairs([difference_hash(image) for _, _, image, _ in readable]):
        (a, person_a, _, _), (b, person_b, _, _) = readable[i], readable[j]
        if frozenset((a, b)) in exact_pairs:
            continue
        detail = f"near-identical pictures ({bits} of {HASH_SIDE * HASH_SIDE} hash bits differ)"
        if person_a != person_b:
            detail += f" under different people: {person_a}, {person_b} (likely a mislabel)"
        report.findings.append(Finding("near_duplicate", [a, b], detail))

    counts = defaultdict(int)
    for _, person, _, _ in readable:
        counts[person] += 1
    for person in scanned.people:
        if counts[person] < min_images:
            report.findings.append(Finding(
                "too_few", [str(scanned.root / person)],
                f"{person} has {counts[person]} readable image(s); at least {min_images} are "
                "needed to hold one out for testing"))

    if store is not None and len(readable) > neighbours:
        _check_model(report, store)
        _find_mislabels(report, readable, store, neighbours)
    return report


def _check_model(report: DoctorReport, store) -> None:
    """Measure the store's model as ``calibrate`` does (nothing saved); set the caveat if weak."""
    from facerank.errors import StoreError
    from facerank.quality.calibrate import calibrate

    try:
        check = calibrate(store, far=MODEL_CHECK_FAR, save=False, unknown=False)
    except StoreError as error:
        report.model_check = {"error": str(error)}
        report.caveat = ("the store's model could not be measured, so its likely mislabels are "
                         f"unchecked guesses ({error})")
        return
    report.model_check = {"tar": check.tar, "far": check.far, "source": check.source,
                          "same_pairs": check.same_pairs, "different_pairs": check.different_pairs}
    if check.caveat is not None:
        report.caveat = (f"the store's model accepts only {check.tar:.0%} of same-person pairs at "
                         f"{check.far * 100:g}% false accepts ({check.source}): it barely "
                         "separates people, so a likely mislabel may be its own mistake rather "
                         "than the gallery's; look at each one, or train a stronger model and "
                         "run doctor again")


def _find_mislabels(report: DoctorReport, readable, store, neighbours: int) -> None:
    from facerank.search.index import FaceIndex

    # What the network sees of each photo: its face, through the store's own step.
    inputs = [(path, person, store.faces.inputs(image, faces=faces))
              for path, person, image, faces in readable]
    readable = [(path, person, found[0].image) for path, person, found in inputs if found]
    if len(readable) <= neighbours:
        return
    vectors = store.model.embed([image for _, _, image in readable])
    index = FaceIndex(vectors.shape[1])
    index.add(np.arange(len(vectors)), vectors)
    _, ids = index.search(vectors, neighbours + 1)
    images_of = defaultdict(int)
    for _, person, _ in readable:
        images_of[person] += 1
    for row, found in enumerate(ids):
        path, person, _ = readable[row]
        others = [readable[i] for i in found if i != row][:neighbours]
        # A person with a single image has no one of their own to be near.
        if images_of[person] <= 1 or any(p == person for _, p, _ in others):
            continue
        names = sorted({p for _, p, _ in others})
        qualified = "" if report.caveat is None else " (a weak model's guess: see the caveat)"
        report.findings.append(Finding(
            "likely_mislabel", [path],
            f"filed under {person}, but its {neighbours} nearest images are of "
            f"{', '.join(names)}{qualified}"))


def _near_pairs(hashes: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """(i, j, differing bits) for i < j closer than NEAR_DUPLICATE_BITS, by FAISS's popcount."""
    import faiss

    if len(hashes) < 2:
        return []
    packed = np.ascontiguousarray(np.stack(hashes), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(packed.shape[1] * 8)
    index.add(packed)
    limits, distances, ids = index.range_search(packed, NEAR_DUPLICATE_BITS)
    pairs = []
    for i in range(len(hashes)):
        for j, bits in zip(ids[limits[i]:limits[i + 1]], distances[limits[i]:limits[i + 1]]):
            if j > i:
                pairs.append((i, int(j), int(bits)))
    return sorted(pairs)
