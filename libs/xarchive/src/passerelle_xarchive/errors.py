"""Named exceptions for archives we refuse.

Every refusal is an :class:`ArchiveError` subclass with a stable machine ``code``
and a human English ``message`` built from :data:`~passerelle_xarchive.messages.MESSAGES`.
``detail`` carries technical context for logs and is never shown to people.
"""

from __future__ import annotations

from typing import ClassVar

from passerelle_xarchive.messages import MESSAGES


class ArchiveError(Exception):
    """Base class: the archive (or uploaded files) cannot be accepted.

    ``code`` is stable and machine-readable; ``message`` is the English text
    for people; to localise, use ``gettext(err.template) % err.params``.
    """

    code: ClassVar[str] = ""

    def __init__(self, detail: str = "", **params: str) -> None:
        self.detail = detail
        self.params: dict[str, str] = params
        super().__init__(self.message)

    @property
    def template(self) -> str:
        """The untranslated message template (the gettext msgid)."""
        return MESSAGES[self.code]

    @property
    def message(self) -> str:
        """The English message for people: what is wrong and what to do."""
        return self.template % self.params

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"


class NotAZipError(ArchiveError):
    """The bytes are not a zip archive at all."""

    code = "not_a_zip"


class TruncatedArchiveError(ArchiveError):
    """The zip ends early (interrupted download or upload)."""

    code = "truncated"


class CorruptArchiveError(ArchiveError):
    """A CRC mismatch, an invalid deflate stream, or inconsistent zip headers."""

    code = "corrupt"


class EncryptedArchiveError(ArchiveError):
    """A member we need is encrypted (password-protected)."""

    code = "encrypted"


class UnsupportedCompressionError(ArchiveError):
    """A member we need uses a compression method other than stored or deflate."""

    code = "unsupported_compression"


class MissingFollowFilesError(ArchiveError):
    """No follower and/or following file: not a complete X data archive."""

    code = "missing_follow_files"


class MissingAccountError(ArchiveError):
    """No account.js, so we cannot tell whose archive this is."""

    code = "missing_account"


class AmbiguousArchiveError(ArchiveError):
    """Several archives (top-level folders) or conflicting account files."""

    code = "ambiguous_archive"


class BrokenJsonError(ArchiveError):
    """A data file is not valid JSON (damaged, truncated or edited)."""

    code = "broken_json"


class UnexpectedShapeError(ArchiveError):
    """A data file is JSON but not shaped like X archive data."""

    code = "unexpected_shape"


class InvalidIdError(ArchiveError):
    """An account id is not an unsigned 64-bit integer (float, negative, too big, text)."""

    code = "invalid_id"


class DecompressionBombError(ArchiveError):
    """Base for the two decompression-bomb refusals."""


class InflatedTooLargeError(DecompressionBombError):
    """The needed members inflate to more than ``ArchiveLimits.max_inflated_bytes``."""

    code = "inflated_too_large"


class CompressionRatioError(DecompressionBombError):
    """A member inflates more than ``ArchiveLimits.max_compression_ratio`` times."""

    code = "compression_ratio_too_high"


class ArchiveTooLargeError(ArchiveError):
    """The archive (or the uploaded files) exceed ``ArchiveLimits.max_archive_bytes``."""

    code = "archive_too_large"


class TooManyMembersError(ArchiveError):
    """The zip has more entries than ``ArchiveLimits.max_members``."""

    code = "too_many_members"


class TooManyEdgesError(ArchiveError):
    """More follow entries than ``ArchiveLimits.max_edges``."""

    code = "too_many_edges"


class UnreadableArchiveError(ArchiveError):
    """The source could not be opened or read (missing file, I/O error)."""

    code = "unreadable"


ALL_ERRORS: tuple[type[ArchiveError], ...] = (
    NotAZipError,
    TruncatedArchiveError,
    CorruptArchiveError,
    EncryptedArchiveError,
    UnsupportedCompressionError,
    MissingFollowFilesError,
    MissingAccountError,
    AmbiguousArchiveError,
    BrokenJsonError,
    UnexpectedShapeError,
    InvalidIdError,
    InflatedTooLargeError,
    CompressionRatioError,
    ArchiveTooLargeError,
    TooManyMembersError,
    TooManyEdgesError,
    UnreadableArchiveError,
)
"""Every concrete error class, one per code."""
