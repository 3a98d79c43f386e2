"""Sizes and durations as people type them: ``4G``, ``512M``, ``1.5T``; ``5ms``, ``200us``.

>>> parse_size("4G")
4294967296
>>> parse_latency("5ms")
5.0
"""

from __future__ import annotations

import re

from facerank.errors import UsageError

#: Binary multiples, as memory is sold and as ``free -h`` shows it.
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
#: Milliseconds per unit.
_TIME_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``512M``, ``4G``, ``4GiB``, ``1.5T`` or ``1048576`` (binary
    multiples: 1K = 1024 bytes).

    >>> parse_size("1.5T") == int(1.5 * 2**40)
    True
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(?:i?b)?\s*", str(text),
                             re.IGNORECASE)
        if not match:
            raise UsageError(f"{text!r} is not a size; write a number with K, M, G or T "
                             "(binary multiples), e.g. 512M, 4G, 1.5T, or plain bytes")
        value, unit = float(match.group(1)), match.group(2).upper()
    size = int(value * _SIZE_UNITS[unit])
    if size <= 0:
        raise UsageError(f"a size must be positive, got {text!r}")
    return size


def parse_latency(text: str | float) -> float:
    """Milliseconds in a duration such as ``5ms``, ``0.5ms``, ``200us`` or ``1s``.

    >>> parse_latency("200us")
    0.2
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s)\s*", str(text), re.IGNORECASE)
    if not match:
        raise UsageError(f"{text!r} is not a latency; write a number with a unit: us, ms or s, "
                         "e.g. 5ms, 0.5ms, 200us")
    milliseconds = float(match.group(1)) * _TIME_UNITS[match.group(2).lower()]
    if milliseconds <= 0:
        raise UsageError(f"a latency must be positive, got {text!r}")
    return milliseconds


def format_size(size: int) -> str:
    """``4.00 GiB``, ``79.7 MiB``: as ``facerank.search.index`` reports memory."""
    if size >= 2**40:
        return f"{size / 2**40:.2f} TiB"
    return f"{size / 2**30:.2f} GiB" if size >= 2**29 else f"{size / 2**20:.1f} MiB"
