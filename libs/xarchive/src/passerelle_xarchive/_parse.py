"""Parsing of X archive data files (``window.YTD.<name>.partN = [ ... ]``).

Follow files are parsed in two gears:

* **Fast path** (vectorised, for the machine-written layout X produces): a
  region of complete entries is checked by its *skeleton* (the exact sequence
  of JSON punctuation ``{}[],:"`` must repeat ``{"":{"":"","":":"}},``), the
  bytes from the kind key to the id's opening quote must equal a template
  learned from the file's first entry (so the key really is ``"follower"`` /
  ``"following"`` then ``"accountId"``), and the ids are read from their
  digits with numpy (never through floats; more than 2**64-1 is refused).
* **Slow path** (general JSON, one entry at a time with :mod:`json`): used for
  the last entry, for any region the fast path does not recognise, and to
  diagnose errors precisely. Bare-number ids are accepted when exact integers.

The fast path never accepts what the slow path would refuse, except for stray
non-punctuation characters between tokens, which it does not look at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final, NoReturn

import numpy as np
from numpy.typing import NDArray

from passerelle_xarchive.errors import (
    AmbiguousArchiveError,
    BrokenJsonError,
    InvalidIdError,
    UnexpectedShapeError,
)

U64 = NDArray[np.uint64]
MAX_U64: Final = (1 << 64) - 1

_BOM: Final = b"\xef\xbb\xbf"
_PREFIX_RE: Final = re.compile(
    rb"[ \t\r\n]*(?:window\.YTD\.([A-Za-z0-9_]+)\.part([0-9]+)[ \t\r\n]*=[ \t\r\n]*)?\["
)
_PREFIX_MAX: Final = 4096
_WS_RE: Final = re.compile(rb"[ \t\r\n]*")
_STRING: Final = rb'"(?:[^"\\]|\\.)*+"'
_FLAT: Final = rb'(?:[^{}"]|' + _STRING + rb")*+"
_ENTRY_RE: Final = re.compile(rb"\{" + _FLAT + rb"(?:\{" + _FLAT + rb"\}" + _FLAT + rb")*+\}")
_MAX_ENTRY: Final = 64 * 1024
_MAX_CARRY: Final = 1024 * 1024
_SPLIT_MIN: Final = 16 * 1024
_ID_TEXT_RE: Final = re.compile(r"[0-9]{1,20}")
_USERNAME_RE: Final = re.compile(r"[A-Za-z0-9_]{1,50}")

_STRUCTURAL: Final = b'{}[],:"'
_DELETE_NON_STRUCTURAL: Final = bytes(b for b in range(256) if b not in _STRUCTURAL)
_SKELETON: Final = b'{"":{"":"","":":"}},'
_ASCII_ZEROS: Final = np.uint64(0x3030303030303030)
_MASK_8: Final = np.uint64(0x00FF00FF00FF00FF)
_MASK_16: Final = np.uint64(0x0000FFFF0000FFFF)
_MASK_32: Final = np.uint64(0x00000000FFFFFFFF)
_E8: Final = np.uint64(10**8)
_E16: Final = np.uint64(10**16)
_TOP_MAX: Final = np.uint64(MAX_U64 // 10**16)  # 1844
_REST_MAX: Final = np.uint64(MAX_U64 % 10**16)  # 6744073709551615

# slow-path states
_PREFIX, _FIRST, _ENTRY, _SEP, _END, _AFTER = range(6)


class _FloatIdError(Exception):
    """Raised from json hooks when a number is not an exact integer."""


def _reject_float(text: str) -> NoReturn:
    raise _FloatIdError(text)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


class _DuplicateKeyError(Exception):
    """A JSON object repeats a key (ambiguous)."""


def _loads(raw: bytes) -> Any:
    return json.loads(
        raw,
        parse_float=_reject_float,
        parse_constant=_reject_float,
        object_pairs_hook=_no_duplicate_keys,
    )


def parse_id(value: object, member: str) -> int:
    """An id from JSON: a string of 1-20 ASCII digits or an exact integer, < 2**64."""
    if isinstance(value, bool):
        raise InvalidIdError(f"boolean id {value!r}", member=member)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _ID_TEXT_RE.fullmatch(value):
        number = int(value)
    else:
        raise InvalidIdError(f"id {str(value)[:40]!r} is not decimal digits", member=member)
    if not 0 <= number <= MAX_U64:
        raise InvalidIdError(f"id {str(value)[:40]!r} is outside 0..2**64-1", member=member)
    return number


def _digit_masks() -> tuple[U64, U64]:
    """Per digit count L: AND/OR masks (3 words) keeping a 24-byte row's last L bytes
    and turning the others into ASCII "0"."""
    keep = np.zeros((25, 24), dtype=np.uint8)
    fill = np.full((25, 24), 48, dtype=np.uint8)
    for length in range(25):
        keep[length, 24 - length :] = 0xFF
        fill[length, 24 - length :] = 0
    return keep.view("<u8").astype(np.uint64), fill.view("<u8").astype(np.uint64)


_KEEP, _FILL = _digit_masks()


def _windows(arr: NDArray[np.uint8], width: int) -> NDArray[np.uint8]:
    """A read-only view whose row ``i`` is ``arr[i : i + width]`` (``arr.size >= width``).

    What numpy's ``sliding_window_view`` returns, without its generic argument
    handling, which cost more than the gathers themselves on 3 calls per piece.
    """
    return np.ndarray((arr.size - width + 1, width), dtype=np.uint8, buffer=arr, strides=(1, 1))


def _parse_digits(
    arr: NDArray[np.uint8], quotes: NDArray[np.intp], lengths: NDArray[np.intp]
) -> U64 | None:
    """Numbers whose ``lengths`` digits end just before ``arr[quotes]``; None on overflow.

    SWAR parsing: the 24 bytes before each closing quote are gathered as rows of
    three little-endian words, bytes left of the digits become "0" (per-length
    masks), and each word turns into its 8-digit value with three
    multiply-shift-mask steps. Exact integer arithmetic; values above 2**64-1 are
    detected, never wrapped.
    """
    rows = _windows(arr, 24)[quotes - 24]
    words = rows.view("<u8").astype(np.uint64, copy=False)
    words = (words & _KEEP[lengths]) | _FILL[lengths]
    words = words - _ASCII_ZEROS
    words = (words * np.uint64(10) + (words >> np.uint64(8))) & _MASK_8
    words = (words * np.uint64(100) + (words >> np.uint64(16))) & _MASK_16
    words = (words * np.uint64(10000) + (words >> np.uint64(32))) & _MASK_32
    top, middle, low = words[:, 0], words[:, 1], words[:, 2]  # 4 + 8 + 8 digits
    rest = middle * _E8 + low
    if ((top > _TOP_MAX) | ((top == _TOP_MAX) & (rest > _REST_MAX))).any():
        return None
    values: U64 = top * _E16 + rest
    return values


class FollowFileParser:
    """Incremental parser of one follower/following file; ids go to ``sink``.

    Feed inflated bytes in any pieces with :meth:`feed`, then call :meth:`close`.
    ``on_entries(n)`` is called before ids are delivered so callers can enforce
    an edge cap. Memory is bounded by the piece size plus one entry.
    """

    def __init__(
        self,
        kind: str,
        member: str,
        sink: Callable[[U64], None],
        on_entries: Callable[[int], None],
    ) -> None:
        if kind not in ("follower", "following"):
            raise ValueError(f"unknown kind {kind!r}")
        self.kind = kind
        self.member = member
        self._key = b'"' + kind.encode() + b'"'
        self._template_re = re.compile(
            re.escape(self._key) + rb'[ \t\r\n]*:[ \t\r\n]*\{[ \t\r\n]*"accountId"[ \t\r\n]*:'
            rb'[ \t\r\n]*"'
        )
        self._sink = sink
        self._on_entries = on_entries
        self._state = _PREFIX
        self._carry = b""
        self._template: bytes | None = None
        self._template_arr: NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
        self._template_i = 0  # index of the "I" of accountId inside the template
        self.entries = 0
        self.fast_entries = 0

    # -- public -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Consume the next piece of the file."""
        if not data:
            return
        if self._state == _PREFIX:
            self._carry += data
            if not self._parse_prefix(eof=False):
                return
            data, self._carry = self._carry, b""
        if self._state in (_FIRST, _ENTRY):
            cut = data.rfind(b"},")
            if cut >= 0:
                cut += 2
                head = memoryview(data)[:cut]
                region = b"".join((self._carry, head)) if self._carry else bytes(head)
                tail = data[cut:]
                self._carry = self._region(region) + tail
                if len(self._carry) > _MAX_CARRY:
                    self._carry = self._slow(self._carry, eof=False)
                return
        self._carry = self._slow(self._carry + data if self._carry else data, eof=False)

    def close(self) -> None:
        """Signal end of file: check the list is properly closed."""
        if self._state == _PREFIX:
            self._parse_prefix(eof=True)
        rest = self._slow(self._carry, eof=True)
        self._carry = b""
        if rest.strip():
            self._broken("unparsed data at end of file")  # pragma: no cover - slow() raises
        if self._state not in (_END, _AFTER):
            self._broken("the list is not closed with ']' (file cut short?)")

    # -- prefix -----------------------------------------------------------------

    def _parse_prefix(self, eof: bool) -> bool:
        buf = self._carry
        if buf.startswith(_BOM):
            buf = buf[len(_BOM) :]
        elif len(buf) < len(_BOM) and _BOM.startswith(buf) and not eof:
            return False
        match = _PREFIX_RE.match(buf)
        if match is None:
            if not eof and len(buf) < _PREFIX_MAX and _could_be_prefix(buf):
                return False
            raise UnexpectedShapeError(
                "does not start with 'window.YTD.<name>.partN = ['", member=self.member
            )
        name = match.group(1)
        if name is not None and name.decode() != self.kind:
            raise UnexpectedShapeError(
                f"holds {name.decode()!r} data, expected {self.kind!r}", member=self.member
            )
        self._carry = buf[match.end() :]
        self._state = _FIRST
        return True

    # -- fast path --------------------------------------------------------------

    def _learn_template(self, region: bytes) -> bool:
        key_at = region.find(self._key)
        if key_at < 0:
            return False
        match = self._template_re.match(region, key_at)
        if match is None:
            return False
        self._template = region[key_at : match.end()]
        self._template_arr = np.frombuffer(self._template, dtype=np.uint8)
        self._template_i = self._template.index(b"accountId") + 7
        return True

    def _region(self, region: bytes) -> bytes:
        """Parse complete entries, fast where possible; return any unparsed tail.

        A region the fast path refuses is split in two at an entry boundary and
        each half retried, so one odd entry costs a slow parse of at most
        :data:`_SPLIT_MIN` bytes around it, not of the whole region.
        """
        if self._fast(region):
            return b""
        self._template = None  # relearn: the layout may have changed
        if len(region) > _SPLIT_MIN:
            middle = region.rfind(b"},", 0, len(region) // 2)
            if middle > 0:
                rest = self._region(region[: middle + 2])
                if rest:  # an entry straddles the halves: no more splitting here
                    return self._slow(rest + region[middle + 2 :], eof=False)
                return self._region(region[middle + 2 :])
        return self._slow(region, eof=False)

    def _fast(self, region: bytes) -> bool:
        """Parse a region of complete entries, each followed by ','; False if unsure.

        Accepts only if (1) the JSON punctuation is exactly that of ``count``
        entries ``{"":{"":"","":":"}},``, (2) "I" occurs ``count`` times,
        (3) around each "I" lie the bytes of the learned template (kind key to
        the id's opening quote) — whose punctuation ``"":{"":"`` fits only at an
        entry's first key, so every entry has exactly one — and (4) each id is
        1-20 digits then '"' and fits in 64 bits.
        """
        skeleton = region.translate(None, _DELETE_NON_STRUCTURAL)
        count, rest = divmod(len(skeleton), len(_SKELETON))
        if count == 0 or rest or skeleton != _SKELETON * count:
            return False
        if self._template is None and not self._learn_template(region):
            return False
        template = self._template_arr
        arr = np.frombuffer(region, dtype=np.uint8)
        i_pos = np.flatnonzero(arr == 73)  # b"I"
        if i_pos.size != count:
            return False
        starts = i_pos - self._template_i
        digits_at = starts + template.size
        if int(starts[0]) < 0 or int(digits_at[0]) < 24 or int(digits_at[-1]) + 21 > arr.size:
            return False
        if not (_windows(arr, template.size)[starts] == template).all():
            return False
        window = _windows(arr, 21)[digits_at]
        is_digit = (window - np.uint8(48)) < 10
        lengths = np.argmin(is_digit, axis=1)
        closing = window[np.arange(count), lengths]
        if not ((lengths > 0) & (closing == 34)).all():
            return False
        values = _parse_digits(arr, digits_at + lengths, lengths)
        if values is None:
            return False
        self._deliver(values)
        self.fast_entries += count
        self._state = _ENTRY
        return True

    def _deliver(self, values: U64) -> None:
        if values.size:
            self._on_entries(int(values.size))
            self.entries += int(values.size)
            self._sink(values)

    # -- slow path --------------------------------------------------------------

    def _slow(self, buf: bytes, eof: bool) -> bytes:
        """General parsing; returns the unconsumed tail (an incomplete entry)."""
        ids: list[int] = []
        pos = 0
        size = len(buf)
        state = self._state
        try:
            while True:
                end = _WS_RE.match(buf, pos)
                assert end is not None
                pos = end.end()
                if pos >= size:
                    break
                char = buf[pos]
                if state in (_FIRST, _ENTRY):
                    if state == _FIRST and char == 0x5D:  # "]": empty list
                        pos += 1
                        state = _END
                        continue
                    if char != 0x7B:  # "{"
                        self._broken(f"expected an entry at byte {pos}, found {bytes([char])!r}")
                    match = _ENTRY_RE.match(buf, pos)
                    if match is None:
                        if not eof and size - pos < _MAX_ENTRY:
                            break
                        self._diagnose(buf, pos)
                    ids.append(self._entry_id(match.group()))
                    pos = match.end()
                    state = _SEP
                elif state == _SEP:
                    if char == 0x2C:  # ","
                        state = _ENTRY
                    elif char == 0x5D:  # "]"
                        state = _END
                    else:
                        self._broken(f"expected ',' or ']' at byte {pos}, found {bytes([char])!r}")
                    pos += 1
                elif state == _END and char == 0x3B:  # ";"
                    state = _AFTER
                    pos += 1
                else:
                    self._broken("data after the end of the list")
        finally:
            self._state = state
        if ids:
            self._deliver(np.array(ids, dtype=np.uint64))
        return buf[pos:]

    def _entry_id(self, raw: bytes) -> int:
        try:
            entry = _loads(raw)
        except _FloatIdError as exc:
            raise InvalidIdError(f"non-integer number {exc}", member=self.member) from None
        except _DuplicateKeyError as exc:
            raise UnexpectedShapeError(f"repeated key {exc}", member=self.member) from None
        except ValueError as exc:
            raise BrokenJsonError(f"invalid entry: {exc}", member=self.member) from None
        if not isinstance(entry, dict) or list(entry) != [self.kind]:
            keys = list(entry)[:3] if isinstance(entry, dict) else type(entry).__name__
            raise UnexpectedShapeError(
                f"entry is not {{{self.kind!r}: ...}} but {keys!r}", member=self.member
            )
        inner = entry[self.kind]
        if not isinstance(inner, dict) or "accountId" not in inner:
            raise UnexpectedShapeError("entry has no accountId", member=self.member)
        return parse_id(inner["accountId"], self.member)

    def _diagnose(self, buf: bytes, pos: int) -> NoReturn:
        """No entry matched at ``pos``: tell broken JSON from valid-but-unexpected."""
        text = buf[pos : pos + 4 * _MAX_ENTRY].decode("utf-8", errors="replace")
        try:
            json.JSONDecoder().raw_decode(text)
        except ValueError:
            if len(buf) - pos >= _MAX_ENTRY and "}" not in text[:_MAX_ENTRY]:
                raise UnexpectedShapeError("entry larger than 64 KiB", member=self.member) from None
            self._broken(f"invalid JSON entry at byte {pos}")
        raise UnexpectedShapeError(
            f"entry at byte {pos} is nested deeper than X entries", member=self.member
        )

    def _broken(self, detail: str) -> NoReturn:
        raise BrokenJsonError(detail, member=self.member)


def _could_be_prefix(buf: bytes) -> bool:
    """True while ``buf`` may still grow into a valid prefix."""
    stripped = buf.lstrip(b" \t\r\n")
    target = b"window.YTD."
    if len(stripped) <= len(target):
        return target.startswith(stripped)
    return stripped.startswith(target)


def parse_account(data: bytes, member: str) -> tuple[int, str]:
    """Parse account.js; return (account id, username). Nothing else is kept."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    match = _PREFIX_RE.match(data)
    if match is None:
        raise UnexpectedShapeError("account file has no 'window.YTD.account' prefix", member=member)
    if match.group(1) is not None and match.group(1) != b"account":
        raise UnexpectedShapeError(f"holds {match.group(1)!r} data", member=member)
    body = data[match.end() - 1 :].rstrip(b" \t\r\n")
    if body.endswith(b";"):
        body = body[:-1]
    try:
        entries = _loads(body)
    except _FloatIdError as exc:
        raise InvalidIdError(f"non-integer number {exc}", member=member) from None
    except _DuplicateKeyError as exc:
        raise UnexpectedShapeError(f"repeated key {exc}", member=member) from None
    except ValueError as exc:
        raise BrokenJsonError(f"invalid JSON: {exc}", member=member) from None
    if not isinstance(entries, list) or not entries:
        raise UnexpectedShapeError("account file holds no account", member=member)
    found: set[tuple[int, str]] = set()
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("account"), dict):
            raise UnexpectedShapeError("entry is not {'account': {...}}", member=member)
        account = entry["account"]
        if "accountId" not in account or "username" not in account:
            raise UnexpectedShapeError("account has no accountId or username", member=member)
        username = account["username"]
        if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
            raise UnexpectedShapeError("username is not an X username", member=member)
        found.add((parse_id(account["accountId"], member), username))
    if len(found) > 1:
        raise AmbiguousArchiveError("account file lists several accounts")
    return found.pop()
