"""Joining a Ray cluster: the one place facerank calls ``ray.init``.

>>> from facerank.scale.cluster import connect
>>> connect("auto")                 # join the cluster on this machine, else start one here
>>> connect("ray://head:10001")     # a remote cluster through Ray Client
"""

from __future__ import annotations

from facerank.errors import MissingExtraError, UsageError

LOCAL = ("auto", "local")


def import_ray():
    """``ray``, or an ImportError that says which extra to install."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError('the ray extra is needed: pip install "facerank[ray]"') from None
    return ray


def connect(address: str | None = "auto", *, num_cpus=None):
    """Connect this process to Ray once; later calls reuse the connection (and ignore their
    arguments, as Ray allows one connection per process).

    ``address``: ``"auto"`` or ``None`` join the cluster running on this machine, or start a
    local one when there is none; ``"local"`` always starts one (``num_cpus`` caps a cluster
    started here);
    ``"ray://host:port"`` (Ray Client) or ``"host:port"`` (a head node's GCS) join that cluster.
    Returns the ``ray`` module.

    >>> ray = connect(None, num_cpus=2)    # a local cluster on 2 CPUs
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address in (None, *LOCAL):
        # ray.init(address=None) joins a running cluster ($RAY_ADDRESS, or the one last started
        # on this machine) and otherwise starts one, where Ray's own "auto" would fail; "local"
        # always starts a fresh one.
        ray.init(address="local" if address == "local" else None, num_cpus=num_cpus,
                 include_dashboard=False)
    elif not isinstance(address, str) or not address.strip():
        raise UsageError(f"address must be 'auto', 'local', None, 'ray://host:port' or "
                         f"'host:port'; got {address!r}")
    else:
        # num_cpus describes a cluster started here: joining one, its nodes say what they have.
        ray.init(address=address)
    return ray
