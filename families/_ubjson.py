"""A bounded UBJSON reader for XGBoost's stored boosters, read before XGBoost's own parser sees the bytes.

It reads the subset XGBoost writes and its reader accepts (src/common/json.cc, UBJReader): objects whose keys
are `L`-sized strings, arrays (plain, `#L`-counted, or `$`-typed with a `#L` count), strings, integers, floats,
booleans and null. Everything else is refused, and so is anything XGBoost's reader would take differently or
unchecked: a duplicate key (XGBoost keeps the first, Python the last), a size past the end of the bytes, nesting
deeper than MAX_DEPTH, more than MAX_ITEMS values, bytes after the top value. It keeps no Python call stack per
level (a loop with its own stack), and allocates nothing larger than the bytes it was given: a typed array is
a view of them.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

MAX_DEPTH = 32  # XGBoost's model nests about 8 deep
MAX_ITEMS = 2_000_000  # values outside typed arrays (a typed array counts once); a 300-tree model has ~10,000

_SCALARS: dict[int, np.dtype[Any]] = {
    ord("i"): np.dtype(">i1"),
    ord("U"): np.dtype("u1"),
    ord("I"): np.dtype(">i2"),
    ord("l"): np.dtype(">i4"),
    ord("L"): np.dtype(">i8"),
    ord("d"): np.dtype(">f4"),
    ord("D"): np.dtype(">f8"),
    ord("C"): np.dtype("i1"),  # a char, read by XGBoost as an integer
}
# The same types, read one value at a time (struct is much faster than numpy for one value).
_STRUCTS = {marker: struct.Struct(">" + code) for marker, code in zip(b"iUIlLdDC", "bBhiqfdb", strict=True)}
_INT64 = _STRUCTS[ord("L")]
_CONSTANTS = {ord("T"): True, ord("F"): False, ord("Z"): None}


class UBJSONError(ValueError):
    """The bytes are not UBJSON this reader will vouch for (the message says where)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> int:
        """The offset of the next `size` bytes, which must exist."""
        if size < 0 or self.pos + size > len(self.data):
            raise UBJSONError(f"a size of {size} at byte {self.pos} runs past the end ({len(self.data)} bytes)")
        at = self.pos
        self.pos += size
        return at

    def byte(self) -> int:
        return self.data[self.take(1)]

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise UBJSONError("the bytes end inside a container")
        return self.data[self.pos]

    def scalar(self, kind: struct.Struct) -> Any:
        return kind.unpack_from(self.data, self.take(kind.size))[0]

    def size(self) -> int:
        """An `L`-marked int64 count or length, as XGBoost writes (and only accepts) them."""
        if self.byte() != ord("L"):
            raise UBJSONError(f"a size at byte {self.pos - 1} is not an int64 (`L`)")
        value = int(self.scalar(_INT64))
        if value < 0 or value > len(self.data) - self.pos:
            raise UBJSONError(f"a size of {value} at byte {self.pos - 8} is larger than the bytes left")
        return value

    def text(self) -> str:
        length = self.size()
        at = self.take(length)
        try:
            return self.data[at : at + length].decode()
        except UnicodeDecodeError:
            raise UBJSONError(f"a string at byte {at} is not UTF-8") from None


def decode(data: bytes) -> Any:
    """The value in `data`: dicts, lists, str, int, float, bool, None, and typed arrays as read-only numpy views.

    Raises UBJSONError for anything outside the subset above or beyond the limits.
    """
    reader = _Reader(data)
    # Each open container: the container, the key its next value goes under (objects), the count still to read
    # (counted arrays; None otherwise).
    stack: list[tuple[Any, list[str | None], list[int | None]]] = []
    items = 0
    while True:
        # Close containers that are complete; find where the next value goes.
        value: Any = _OPEN
        if stack:
            container, key, left = stack[-1]
            if isinstance(container, dict):
                if reader.peek() == ord("}"):
                    reader.pos += 1
                    value = container
                else:
                    name = reader.text()
                    if name in container:
                        raise UBJSONError(f"the key {name!r} appears twice in one object")
                    key[0] = name
            elif left[0] is None and reader.peek() == ord("]"):
                reader.pos += 1
                value = container
            elif left[0] == 0:
                value = container
        if value is _OPEN:
            value = _read_value(reader)
            items += 1
            if items > MAX_ITEMS:
                raise UBJSONError(f"more than {MAX_ITEMS} values")
            if isinstance(value, _Container):
                if len(stack) >= MAX_DEPTH:
                    raise UBJSONError(f"nested deeper than {MAX_DEPTH}")
                stack.append((value.empty, [None], [value.count]))
                continue
        else:
            stack.pop()
        if not stack:
            if reader.pos != len(data):
                raise UBJSONError(f"{len(data) - reader.pos} bytes after the value")
            return value
        container, key, left = stack[-1]
        if isinstance(container, dict):
            container[key[0]] = value
        else:
            container.append(value)
            if left[0] is not None:
                left[0] -= 1


_OPEN = object()


class _Container:
    """A container just opened: what it will fill, and how many values it holds if counted."""

    def __init__(self, empty: dict[str, Any] | list[Any], count: int | None) -> None:
        self.empty, self.count = empty, count


def _read_value(reader: _Reader) -> Any:
    marker = reader.byte()
    if marker in _STRUCTS:
        return reader.scalar(_STRUCTS[marker])
    if marker in _CONSTANTS:
        return _CONSTANTS[marker]
    if marker == ord("S"):
        return reader.text()
    if marker == ord("{"):
        return _Container({}, None)
    if marker == ord("["):
        following = reader.peek()
        if following == ord("$"):
            reader.pos += 1
            kind = reader.byte()
            if kind not in _SCALARS or kind == ord("C"):
                raise UBJSONError(f"a typed array of {chr(kind)!r} at byte {reader.pos - 1}")
            if reader.byte() != ord("#"):
                raise UBJSONError(f"a typed array without a count at byte {reader.pos - 1}")
            dtype = _SCALARS[kind]
            count = reader.size()
            if count * dtype.itemsize > len(reader.data) - reader.pos:
                raise UBJSONError(f"a typed array of {count} runs past the end")
            return np.frombuffer(reader.data, dtype, count, reader.take(count * dtype.itemsize))
        if following == ord("#"):
            reader.pos += 1
            return _Container([], reader.size())  # each value takes a byte at least: size() bounds it
        return _Container([], None)
    raise UBJSONError(f"marker {chr(marker)!r} at byte {reader.pos - 1} is not one XGBoost writes")
