"""Beyond one machine: the same work as a local build, run on a Ray cluster.

Ray starts a local cluster on a laptop (``ray="auto"``) and joins a real one by address
(``ray="ray://head:10001"``). Ray Data embeds a gallery in an actor pool
(``facerank.scale.embedding``), Ray tasks fill the index's shards
(``facerank.scale.index_build``), Ray Train runs data-parallel training
(``facerank.scale.training``). Everything commits into the same store a local build writes.
Needs the ray extra: ``pip install "facerank[ray]"``.
"""

__all__ = ["RayEngine"]


def __getattr__(name: str):
    # Loaded on first use: ``facerank.scale.plan`` (arithmetic) should not import the store.
    if name == "RayEngine":
        from facerank.scale.embedding import RayEngine

        return RayEngine
    raise AttributeError(f"module 'facerank.scale' has no attribute {name!r}")
