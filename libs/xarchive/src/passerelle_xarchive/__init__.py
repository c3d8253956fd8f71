"""passerelle's X archive reader: streaming, bounded memory, data-minimising.

Typical use::

    from passerelle_xarchive import read_archive, ArchiveError

    try:
        with read_archive("twitter-archive.zip") as contents:
            contents.account.id, contents.account.username
            len(contents.followers), len(contents.following)
            for x_id in contents.followers: ...          # ascending ints
            contents.followers.write_payload(out)        # binary payload
    except ArchiveError as err:
        err.code, err.message                            # stable code, English text

Only account id/username and the follow edges' X ids are ever kept.
"""

from passerelle_xarchive.edges import EdgeSet, EdgeSetBuilder
from passerelle_xarchive.errors import (
    ALL_ERRORS,
    AmbiguousArchiveError,
    ArchiveError,
    ArchiveTooLargeError,
    BrokenJsonError,
    CompressionRatioError,
    CorruptArchiveError,
    DecompressionBombError,
    EncryptedArchiveError,
    InflatedTooLargeError,
    InvalidIdError,
    MissingAccountError,
    MissingFollowFilesError,
    NotAZipError,
    TooManyEdgesError,
    TooManyMembersError,
    TruncatedArchiveError,
    UnexpectedShapeError,
    UnreadableArchiveError,
    UnsupportedCompressionError,
)
from passerelle_xarchive.limits import ArchiveLimits
from passerelle_xarchive.messages import MESSAGES
from passerelle_xarchive.payload import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    PayloadError,
    iter_payload_arrays,
    iter_payload_ids,
    payload_size,
    read_payload_header,
)
from passerelle_xarchive.reader import (
    Account,
    ArchiveContents,
    ReadStats,
    classify_member_name,
    read_archive,
    read_extracted_files,
)

__all__ = [
    "ALL_ERRORS",
    "HEADER_SIZE",
    "MAGIC",
    "MESSAGES",
    "VERSION",
    "Account",
    "AmbiguousArchiveError",
    "ArchiveContents",
    "ArchiveError",
    "ArchiveLimits",
    "ArchiveTooLargeError",
    "BrokenJsonError",
    "CompressionRatioError",
    "CorruptArchiveError",
    "DecompressionBombError",
    "EdgeSet",
    "EdgeSetBuilder",
    "EncryptedArchiveError",
    "InflatedTooLargeError",
    "InvalidIdError",
    "MissingAccountError",
    "MissingFollowFilesError",
    "NotAZipError",
    "PayloadError",
    "ReadStats",
    "TooManyEdgesError",
    "TooManyMembersError",
    "TruncatedArchiveError",
    "UnexpectedShapeError",
    "UnreadableArchiveError",
    "UnsupportedCompressionError",
    "classify_member_name",
    "iter_payload_arrays",
    "iter_payload_ids",
    "payload_size",
    "read_archive",
    "read_extracted_files",
    "read_payload_header",
]
