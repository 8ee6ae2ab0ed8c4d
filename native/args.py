"""Argument checks the plain-Python references share, raising what PyO3 raises for the Rust side.

The property tests compare exception types between each native structure and its reference
(docs/native.md), so these mirror PyO3's conversions: `operator.index` for integers
(TypeError for a non-int), OverflowError outside the Rust type's range.
"""

from __future__ import annotations

import operator
from typing import SupportsIndex

U64_MAX = (1 << 64) - 1
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1


def u64(x: SupportsIndex) -> int:
    """A key, time or deadline: TypeError if not an int, OverflowError outside [0, 2**64)."""
    v = int(operator.index(x))
    if not 0 <= v <= U64_MAX:
        raise OverflowError("int out of range for u64")
    return v


def i64(x: SupportsIndex) -> int:
    """A configuration integer: TypeError if not an int, OverflowError outside i64."""
    v = int(operator.index(x))
    if not I64_MIN <= v <= I64_MAX:
        raise OverflowError("int out of range for i64")
    return v


def exact_bool(x: object, what: str) -> bool:
    """A flag: only True or False (PyO3's bool extraction refuses ints)."""
    if type(x) is not bool:
        raise TypeError(f"{what} must be bool, not {type(x).__name__}")
    return x


def str_key(x: object, what: str, max_bytes: int) -> bytes:
    """An id given as str -> its UTF-8 (surrogatepass) bytes.

    TypeError if not a str; ValueError if longer than `max_bytes` (checked on the code
    points first, so a huge string is refused before it is encoded).
    """
    if not isinstance(x, str):
        raise TypeError(f"{what} must be str, not {type(x).__name__}")
    if str.__len__(x) > max_bytes:
        raise ValueError(f"key longer than {max_bytes} bytes")
    b = str.encode(x, "utf-8", "surrogatepass")
    if len(b) > max_bytes:
        raise ValueError(f"key longer than {max_bytes} bytes")
    return b
