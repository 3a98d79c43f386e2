"""The store: one folder holding a model, its gallery's records and vectors, and a FAISS index.

Read top-down: ``face_store`` (open, query, write) uses ``ingest`` (the writes), ``snapshot``
(what a query reads), ``migrate`` (making the database), ``database`` (SQLite, the source of
truth), ``layout`` (the folder's files) and ``results`` (the dataclasses it answers with).
"""

from facerank.store.face_store import LOCK_WAIT, FaceStore
from facerank.store.ingest import COMMIT_EVERY
from facerank.store.results import (ChangeReport, FaceAnswer, Match, PhotoAnswer, PhotoFaces,
                                    PhotoMatches, PhotoPeople, Prediction, Record, Verification,
                                    file_sha256)

__all__ = ["FaceStore", "Record", "Match", "Prediction", "Verification", "FaceAnswer",
           "PhotoAnswer", "PhotoPeople", "PhotoMatches", "PhotoFaces", "ChangeReport",
           "file_sha256", "COMMIT_EVERY", "LOCK_WAIT"]
