"""The face step: find every face in a photo, mark 5 landmarks, cut each one out aligned.

    >>> step = FaceStep(detector="dlib-hog")
    >>> finder = FaceFinder(step, size=112)
    >>> faces = finder.find(load_image("group.jpg"))        # largest first
    >>> chip = finder.align(load_image("group.jpg"), faces[0])  # 112 x 112, eyes level

The network only ever sees what this step gives it. How faces are found and framed is a
``FaceStep``, saved with the model (``model.json``) and part of its identity, so a store
trained on aligned faces is never queried with whole frames, nor the other way round.

Backends are detectors behind one small interface (``FaceDetector``): dlib's HOG frontal
detector (the offline default, ``"dlib-hog"``) and dlib's CNN (MMOD) detector from a file the
user supplies (``"dlib-cnn"``). Landmarks always come from dlib's 5-point shape predictor,
which PyPI's ``face_recognition_models`` ships. ``register_detector`` adds another backend
without touching the rest. dlib is imported on first use only (``pip install
"facerank[faces]"``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image

from facerank.errors import MissingExtraError, StoreError, StoreMismatchError, UsageError

NO_FACE_POLICIES = ("whole", "skip")
#: The landmark order of every backend (dlib's 5-point model): two corners of the eye on the
#: image's right, two of the eye on the image's left, the base of the nose.
LANDMARKS = ("right_eye_outer", "right_eye_inner", "left_eye_outer", "left_eye_inner", "nose")

# Where the 5 landmarks sit on an aligned face, in units of the distance between the eye
# centres, from the midpoint between the eyes (x to the image's right, y down). Medians measured
# with dlib's 5-point model on 200 LFW photos; the fit uses all five points, so a tilted or
# turned head lands where a frontal one would.
TEMPLATE = np.array([
    [0.70, 0.0], [0.30, 0.0], [-0.70, 0.0], [-0.30, 0.0], [0.0, 0.77]])

#: Photos are detected at most this large (longer side): a 12-megapixel photo costs as much
#: as a 2-megapixel one, and faces under 1/20 of the frame are not what a gallery holds.
MAX_DETECT_SIDE = 1600
#: Smaller photos (longer side) are also searched upsampled once: dlib's HOG window is 80 px,
#: and a smaller face is found only so. Where only the largest face is wanted (gallery photos in
#: training and indexing, single-answer queries), the ~4x dearer upsampled search runs only
#: where the first found nothing: a face near 80 px is found as it is, its box snapped to the
#: window, with the 5-point landmarks within 3% of the eye distance of the upsampled search's
#: (median, LFW and ORL; benchmarks/upsampling.py). Where every face is wanted, both searches
#: run and the upsampled one adds the faces the first missed.
UPSAMPLE_BELOW = 400


@dataclass(frozen=True)
class FaceStep:
    """How a photo becomes the network's input; saved in ``model.json`` as ``faces``.

    ``detector="none"`` feeds the whole image (the behaviour for tight crops, and where dlib is
    not installed). Any other detector finds faces and aligns the largest (or each) one.
    """

    detector: str = "none"          # "none", "dlib-hog", "dlib-cnn", or a registered backend
    model_file: str = ""            # the detector's weights, for backends that need a file
    model_fingerprint: str = ""     # sha256 of model_file: another file is another step
    no_face: str = "whole"          # a photo with no face: "whole" image, or "skip" it
    eye_distance: float = 0.30      # chip framing: distance between the eye centres / side
    eye_height: float = 0.40        # chip framing: height of the eye line / side

    def __post_init__(self):
        if self.no_face not in NO_FACE_POLICIES:
            raise UsageError(f"no_face must be one of {', '.join(NO_FACE_POLICIES)}; "
                             f"got {self.no_face!r}")
        if self.detector != "none" and self.detector not in DETECTORS:
            raise UsageError(f"unknown face detector {self.detector!r}; choose one of "
                             f"none, {', '.join(DETECTORS)}")
        if not 0.1 <= self.eye_distance <= 0.8 or not 0.1 <= self.eye_height <= 0.9:
            raise UsageError("eye_distance must be in [0.1, 0.8] and eye_height in [0.1, 0.9]")

    @property
    def enabled(self) -> bool:
        return self.detector != "none"

    def detection_key(self, every: bool = True) -> str:
        """What a cached detection depends on: the detector and its weights, and whether every
        face was looked for; not the framing."""
        search = "all" if every else "if-none"
        return f"{self.detector}:{self.model_fingerprint[:16]}:upsample<{UPSAMPLE_BELOW}-{search}"

    def describe(self) -> str:
        """One line for a run's output: which mode it used."""
        if not self.enabled:
            return "faces: none (the whole image is the network's input)"
        file = f" ({Path(self.model_file).name})" if self.model_file else ""
        return (f"faces: {self.detector}{file} + dlib 5-point alignment; photos without a face: "
                f"{'whole image' if self.no_face == 'whole' else 'skipped'}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "FaceStep":
        data = data or {}
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def identity_parts(self) -> list:
        """What the step contributes to a model's identity (the file's path does not count)."""
        return [self.detector, self.model_fingerprint, self.no_face, self.eye_distance,
                self.eye_height]


@dataclass(frozen=True)
class Face:
    """One face in a photo: its box, the detector's confidence, and 5 landmarks (x, y)."""

    box: tuple[int, int, int, int]                    # left, top, right, bottom, in pixels
    confidence: float
    landmarks: tuple[tuple[float, float], ...]        # in LANDMARKS order

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return max(right - left, 0) * max(bottom - top, 0)

    def to_json(self) -> dict:
        return {"box": list(self.box), "confidence": round(self.confidence, 4),
                "landmarks": {name: [round(x, 1), round(y, 1)]
                              for name, (x, y) in zip(LANDMARKS, self.landmarks)}}

    @classmethod
    def from_json(cls, data: dict) -> "Face":
        marks = data["landmarks"]
        points = [marks[name] for name in LANDMARKS] if isinstance(marks, dict) else marks
        return cls(box=tuple(int(v) for v in data["box"]), confidence=float(data["confidence"]),
                   landmarks=tuple((float(x), float(y)) for x, y in points))

    def eye_angle(self) -> float:
        """The tilt of the line through the eye centres, in degrees (0 = level)."""
        points = np.asarray(self.landmarks)
        right, left = points[0:2].mean(0), points[2:4].mean(0)
        return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


class FaceDetector(Protocol):
    """A backend: every face in an RGB uint8 array (H x W x 3), with 5 landmarks each.
    ``every=False``: only the largest face is wanted, so a backend may search less thoroughly.
    A backend that cannot may leave ``every`` out of its signature: ``detect(pixels)`` is
    called so."""

    def detect(self, pixels: np.ndarray, every: bool = True) -> list[Face]: ...


#: name → factory(step) for each backend. ``register_detector`` adds one.
DETECTORS: dict[str, Callable[[FaceStep], FaceDetector]] = {}


def register_detector(name: str, factory: Callable[[FaceStep], FaceDetector]) -> None:
    """Make a backend available as ``FaceStep(detector=name)``.

    >>> register_detector("my-cnn", lambda step: MyDetector(step.model_file))
    """
    if not name or name == "none":
        raise UsageError(f"a detector needs a name other than 'none'; got {name!r}")
    DETECTORS[name] = factory


def face_step(detector: str = "auto", *, model_file: str | Path | None = None,
              no_face: str = "whole") -> FaceStep:
    """The step a training run saves: ``"auto"`` is dlib's HOG detector where dlib is
    installed (the ``faces`` extra) and the whole image where it is not.

    >>> face_step("dlib-cnn", model_file="mmod_human_face_detector.dat")
    """
    if detector == "auto":
        detector = "dlib-hog" if dlib_available() else "none"
    if detector == "none":
        return FaceStep(no_face=no_face)
    fingerprint = ""
    if model_file:
        path = Path(model_file)
        try:
            fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as error:
            raise UsageError(f"{path}: cannot read the face detector's file "
                             f"({error.strerror or error})") from None
        model_file = str(path.resolve())
    elif detector == "dlib-cnn":
        raise UsageError("the dlib-cnn detector needs its weights file: pass model_file= "
                         "(--face-model FILE), e.g. dlib's mmod_human_face_detector.dat")
    return FaceStep(detector=detector, model_file=str(model_file or ""),
                    model_fingerprint=fingerprint, no_face=no_face)


def dlib_available() -> bool:
    """Whether dlib and the 5-point landmark model (the ``faces`` extra) are installed."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return landmark_model_path() is not None


def landmark_model_path() -> Path | None:
    """dlib's 5-point landmark model, as PyPI's ``face_recognition_models`` ships it.

    Found without importing that package: its ``__init__`` needs setuptools' deprecated
    ``pkg_resources``, which a fresh virtual environment no longer has.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / "shape_predictor_5_face_landmarks.dat"
        if path.is_file():
            return path
    return None


# -- dlib backends ---------------------------------------------------------------------------------

def _dlib():
    try:
        import dlib
    except ImportError:
        dlib = None
    landmarks = landmark_model_path()
    if dlib is None or landmarks is None:
        raise MissingExtraError('finding faces needs dlib and its 5-point landmark model: pip '
                                'install "facerank[faces]" (dlib-bin and face_recognition_models)')
    return dlib, landmarks


class _DlibBackend:
    """dlib's detectors share the 5-point landmark model, the scaling and the upsampling."""

    def __init__(self):
        self._dlib, landmarks = _dlib()
        self._landmarks = self._dlib.shape_predictor(str(landmarks))

    def detect(self, pixels: np.ndarray, every: bool = True) -> list[Face]:
        height, width = pixels.shape[:2]
        scale = min(1.0, MAX_DETECT_SIDE / max(height, width))
        small = pixels
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR))
        small = np.ascontiguousarray(small)
        found = list(self._boxes(small, 0))
        if max(small.shape[:2]) < UPSAMPLE_BELOW and (every or not found):
            # Faces the first search found keep its boxes (the same chips either way); the
            # upsampled search adds those it missed.
            found += [(rect, confidence) for rect, confidence in self._boxes(small, 1)
                      if not any(_same_face(rect, seen) for seen, _ in found)]
        faces = []
        for rect, confidence in found:
            shape = self._landmarks(small, rect)
            points = tuple((p.x / scale, p.y / scale) for p in shape.parts())
            box = (max(0, round(rect.left() / scale)), max(0, round(rect.top() / scale)),
                   min(width, round((rect.right() + 1) / scale)),
                   min(height, round((rect.bottom() + 1) / scale)))
            faces.append(Face(box=box, confidence=float(confidence), landmarks=points))
        return faces

    def _boxes(self, pixels: np.ndarray, upsample: int):
        raise NotImplementedError


def _same_face(a, b) -> bool:
    """Whether two dlib rectangles frame one face: either's centre lies inside the other."""
    def inside(rect, x, y):
        return rect.left() <= x <= rect.right() and rect.top() <= y <= rect.bottom()
    return inside(a, b.center().x, b.center().y) or inside(b, a.center().x, a.center().y)


class DlibHogDetector(_DlibBackend):
    """dlib's HOG + linear SVM frontal face detector (shipped inside dlib; Boost licence)."""

    def __init__(self, step: FaceStep | None = None):
        super().__init__()
        self._detector = _frontal_face_detector(self._dlib)

    def _boxes(self, pixels, upsample):
        rects, scores, _ = self._detector.run(pixels, upsample, 0.0)
        return zip(rects, scores)


def _frontal_face_detector(dlib):
    """dlib's built-in HOG detector, through a saved copy in the user's cache folder.

    Building it from dlib's embedded description takes ~0.5 s; loading the same detector from
    its saved file, 8 ms (same boxes on 300 LFW photos; benchmarks/results/face_detection.md):
    that is most of the face step's share of a one-shot query.
    """
    import os
    import tempfile

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facerank"
    saved = root / f"dlib-{dlib.__version__}-frontal-face-detector.svm"
    if saved.is_file():
        try:
            return dlib.fhog_object_detector(str(saved))
        except RuntimeError:
            pass  # damaged: build it again and replace the file
    detector = dlib.get_frontal_face_detector()
    temporary = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=root, prefix=".detector.", suffix=".tmp")
        os.close(handle)
        detector.save(temporary)
        os.replace(temporary, saved)
    except (OSError, RuntimeError):
        # A read-only home costs half a second per process, nothing more.
        if temporary:
            Path(temporary).unlink(missing_ok=True)
    return detector


class DlibCnnDetector(_DlibBackend):
    """dlib's CNN (MMOD) face detector, from a weights file the user supplies."""

    def __init__(self, step: FaceStep):
        super().__init__()
        if not step.model_file:
            raise UsageError("the dlib-cnn detector needs its weights file (model_file)")
        path = Path(step.model_file)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise StoreError(f"{path}: the face detector's file cannot be read "
                             f"({error.strerror or error}); put it back or train again with "
                             "another --face-model") from None
        if step.model_fingerprint and hashlib.sha256(data).hexdigest() != step.model_fingerprint:
            raise StoreMismatchError(f"{path} is not the face detector file this model was "
                                     "trained with (its sha256 differs); restore that file or "
                                     "train again")
        try:
            self._detector = self._dlib.cnn_face_detection_model_v1(str(path))
        except RuntimeError as error:
            raise UsageError(f"{path}: not a dlib CNN face detector ({error})") from None

    def _boxes(self, pixels, upsample):
        return [(found.rect, found.confidence) for found in self._detector(pixels, upsample)]


register_detector("dlib-hog", DlibHogDetector)
register_detector("dlib-cnn", DlibCnnDetector)


# -- alignment -----------------------------------------------------------------------------------

def alignment_matrix(face: Face, size: int, step: FaceStep) -> np.ndarray:
    """The 2 x 3 similarity (rotation, scale, shift) taking the chip's pixels to the photo's.

    A least-squares fit of the 5 landmarks to ``TEMPLATE`` placed by the step's framing
    (Umeyama's closed form, in 2-D): eyes level, their distance ``eye_distance`` x ``size``.
    """
    target = TEMPLATE * (step.eye_distance * size) + np.array([size / 2, step.eye_height * size])
    source = np.asarray(face.landmarks, dtype=np.float64)
    # Solve source ≈ s R target + t: chip coordinates → photo coordinates, which is the
    # direction PIL's transform wants.
    target_mean, source_mean = target.mean(0), source.mean(0)
    t, s = target - target_mean, source - source_mean
    a = (t * s).sum()                                      # sum of dot products
    b = (t[:, 0] * s[:, 1] - t[:, 1] * s[:, 0]).sum()      # sum of cross products
    norm = (t ** 2).sum()
    cos, sin = a / norm, b / norm                          # scale x (cos θ, sin θ)
    rotation = np.array([[cos, -sin], [sin, cos]])
    shift = source_mean - rotation @ target_mean
    return np.hstack([rotation, shift[:, None]])


def align(image: Image.Image, face: Face, size: int, step: FaceStep | None = None) -> Image.Image:
    """The face cut out upright: a ``size`` x ``size`` RGB image, eyes level, fixed framing.

    Where the chip reaches past the photo's edge (a tight crop such as ORL's, a face at the
    border), the photo's edge pixels are repeated rather than filled black: black borders would
    teach the network a frame that faces in ordinary photos do not have (on ORL, a fifth of a
    chip on average).
    """
    step = step or FaceStep(detector="dlib-hog")
    matrix = alignment_matrix(face, size, step)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]]) @ matrix.T
    width, height = image.size
    left = int(np.ceil(max(0.0, -corners[:, 0].min())))
    top = int(np.ceil(max(0.0, -corners[:, 1].min())))
    right = int(np.ceil(max(0.0, corners[:, 0].max() - width)))
    bottom = int(np.ceil(max(0.0, corners[:, 1].max() - height)))
    if left or top or right or bottom:
        padded = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
        image = Image.fromarray(padded)
        matrix = matrix + np.array([[0, 0, left], [0, 0, top]])
    # Shrinking by more than 2x in one affine step aliases: reduce the photo by an integer
    # factor first (a box filter), then resample.
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    factor = max(1, int(scale // 2))
    if factor > 1:
        image = image.reduce(factor)
        matrix = matrix / factor
    coefficients = tuple(matrix.reshape(-1))
    return image.transform((size, size), Image.AFFINE, coefficients, resample=Image.BILINEAR,
                           fillcolor=(0, 0, 0))


def _detect(detector: FaceDetector, pixels: np.ndarray, every: bool) -> list[Face]:
    """``detector.detect(pixels, every)``, or ``detect(pixels)`` for a backend whose ``detect``
    has no ``every`` (backends written before it existed)."""
    try:
        parameters = list(inspect.signature(detector.detect).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: assume today's protocol
        return detector.detect(pixels, every)
    named = [p for p in parameters if p.name == "every"]
    if named:
        return (detector.detect(pixels, every=every) if named[0].kind is named[0].KEYWORD_ONLY
                else detector.detect(pixels, every))
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return detector.detect(pixels, every=every)
    return detector.detect(pixels)


# -- the step at work ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceInput:
    """What the network is fed for one face: the aligned chip, and the face it came from.

    ``face`` is None when the step is off or found no face and the whole image is used.
    """

    image: Image.Image
    face: Face | None


class FaceFinder:
    """A ``FaceStep`` at work: loaded detectors, optionally a cache of past detections.

    Thread-safe: a detector serves one thread at a time (dlib's detectors must not be shared
    between threads), so concurrent callers borrow one each from a small pool.
    """

    def __init__(self, step: FaceStep, *, size: int, cache=None):
        self.step = step
        self.size = size
        self.cache = cache  # a facerank.faces.cache.DetectionCache, or None
        self._idle: list[FaceDetector] = []
        self._loading = 0
        self._changed = threading.Condition()

    def preload(self) -> None:
        """Load a detector on a background thread now (dlib's HOG detector takes ~0.2-0.5 s to
        load), so that it is ready when the first photo arrives: a one-shot query loads it
        while the network loads."""
        if not self.step.enabled:
            return
        with self._changed:
            if self._idle or self._loading:
                return
            self._loading += 1
        threading.Thread(target=self._load_one, name="facerank-detector", daemon=False).start()

    def _load_one(self) -> None:
        try:
            detector = DETECTORS[self.step.detector](self.step)
        except Exception:  # the caller that needs it will load it again and see the error
            detector = None
        with self._changed:
            self._loading -= 1
            if detector is not None:
                self._idle.append(detector)
            self._changed.notify_all()

    def _borrow(self) -> FaceDetector:
        with self._changed:
            while not self._idle and self._loading:
                self._changed.wait()  # one is being loaded: cheaper to wait than to load two
            if self._idle:
                return self._idle.pop()
        return DETECTORS[self.step.detector](self.step)

    def _give_back(self, detector: FaceDetector) -> None:
        with self._changed:
            self._idle.append(detector)

    def find(self, image: Image.Image, *, key: str | None = None, every: bool = True
             ) -> list[Face]:
        """Every face in ``image``, largest first. ``key`` (the file's sha256) caches it.
        ``every=False``: only the largest face matters (faces under the detector's smallest
        size may be missed where a larger one is found), which is faster on small photos."""
        if not self.step.enabled:
            return []
        if key and self.cache is not None:
            cached = self.cache.get(key, self.step.detection_key(every))
            if cached is not None:
                return cached
        detector = self._borrow()
        try:
            faces = sorted(_detect(detector, np.asarray(image), every), key=lambda f: -f.area)
        finally:
            self._give_back(detector)
        if key and self.cache is not None:
            self.cache.put(key, self.step.detection_key(every), faces)
        return faces

    def align(self, image: Image.Image, face: Face) -> Image.Image:
        return align(image, face, self.size, self.step)

    def inputs(self, image: Image.Image, *, key: str | None = None, every: bool = False,
               faces: list[Face] | None = None) -> list[FaceInput]:
        """The network's inputs for a photo: the largest face (or ``every`` face), aligned.

        With no face found: ``[FaceInput(image, None)]`` under ``no_face="whole"``, ``[]``
        under ``"skip"``. With the step off, always the whole image.
        """
        if not self.step.enabled:
            return [FaceInput(image, None)]
        faces = self.find(image, key=key, every=every) if faces is None else faces
        if not faces:
            return [FaceInput(image, None)] if self.step.no_face == "whole" else []
        chosen = faces if every else faces[:1]
        return [FaceInput(self.align(image, face), face) for face in chosen]


def detection_finder(step: FaceStep | None = None) -> FaceFinder:
    """A finder for detection alone (boxes and landmarks; nothing aligned for a network): with a
    store's ``step``, or dlib's HOG detector when none is given. A step that finds no faces (a
    store trained with ``--faces none``) is refused with what to do instead.

    >>> [face.box for face in detection_finder().find(facerank.load_image("group.jpg"))]
    [(..., ..., ..., ...), (..., ..., ..., ...)]
    """
    step = step or face_step("dlib-hog")
    if not step.enabled:
        raise UsageError("this store has no face step (it was trained with --faces none); "
                         "find faces without it (dlib's HOG detector: no store)")
    # The size is that of aligned crops, which detection alone never makes.
    return FaceFinder(step, size=112)

