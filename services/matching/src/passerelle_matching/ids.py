"""X ids in the database: unsigned 64-bit ids kept in signed ``BIGINT`` columns.

X ids are unsigned 64-bit integers (some are beyond 2**63). Both databases store
signed 64-bit integers, so an id is stored as the signed integer with the same
64 bits (two's complement). Equality, which is all matching needs, is preserved;
order is not (and is never used).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_TWO_64 = 1 << 64
_TWO_63 = 1 << 63


def to_db(x_id: int | str) -> int:
    """The signed 64-bit value stored for an unsigned X id."""
    value = int(x_id)
    if not 0 <= value < _TWO_64:
        raise ValueError(f"X id out of the unsigned 64-bit range: {x_id}")
    return value - _TWO_64 if value >= _TWO_63 else value


def from_db(value: int) -> str:
    """The X id (decimal string) for a stored value."""
    return str(value + _TWO_64 if value < 0 else value)


def claim_to_db(x_id: str) -> int | None:
    """An archive's claimed X id, or ``None`` if it cannot be an X id at all."""
    try:
        return to_db(x_id)
    except ValueError:
        return None


def array_to_db(ids: NDArray[np.uint64]) -> NDArray[np.int64]:
    """A batch of unsigned ids as the signed values stored (no copy)."""
    return np.ascontiguousarray(ids, dtype=np.uint64).view(np.int64)
