"""The one seed mix the data pipeline draws every random generator from.

Exact resume depends on every reader drawing the same generator states from the same integers (the run's
seed, a source, an epoch, a slot, a window, a batch): so the indexed loader (:mod:`mmkit.data.loader`) and
the streaming reader (:mod:`mmkit.data.streaming`) both use :func:`mix_seed`.
"""

from __future__ import annotations

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = 0xFFFFFFFFFFFFFFFF


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), stable across processes, runs and platforms."""
    x = _GOLDEN
    for p in parts:
        x ^= (int(p) + _GOLDEN + (x << 6) + (x >> 2)) & _MASK
        x = (x * 0xBF58476D1CE4E5B9) & _MASK
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF
