"""Every message a person can see about a refused archive, in one place.

Each message is an English gettext msgid: translate the template first, then
interpolate the error's ``params`` (``_(MESSAGES[code]) % params``). Codes are
stable machine identifiers; never change one, add a new one instead.
"""

from __future__ import annotations

from typing import Final

_HOW_TO_REQUEST: Final = (
    "Request a complete archive from X: Settings → Your account → "
    "Download an archive of your data, then upload the .zip file X sends you."
)

MESSAGES: Final[dict[str, str]] = {
    "not_a_zip": (
        "This file is not a zip archive. Upload the .zip file X sent you, as it is "
        "(not a folder, a single file taken out of it, or another kind of file)."
    ),
    "truncated": (
        "The archive is incomplete: its download or upload was probably cut off. "
        "Download your archive from X again and upload the new file."
    ),
    "corrupt": (
        "The archive is damaged: its contents do not match their checksums. "
        "Download your archive from X again and upload the new file."
    ),
    "encrypted": (
        "The archive is protected by a password, so it cannot be read. Upload the "
        "archive exactly as X sent it, without adding a password."
    ),
    "unsupported_compression": (
        "The archive was compressed with a method that cannot be read here. Upload "
        "the .zip file exactly as X sent it, without compressing it again."
    ),
    "missing_follow_files": (
        "The archive has no list of your followers or of the accounts you follow "
        "(%(missing)s not found). " + _HOW_TO_REQUEST
    ),
    "missing_account": (
        "The archive has no account file (data/account.js), so it cannot tell whose "
        "archive it is. " + _HOW_TO_REQUEST
    ),
    "ambiguous_archive": (
        "The file contains more than one X archive or account. Upload one archive "
        "at a time, exactly as X sent it."
    ),
    "broken_json": (
        "The file %(member)s in the archive is damaged or was edited and cannot be "
        "read. Download your archive from X again and upload the new file."
    ),
    "unexpected_shape": (
        "The file %(member)s does not look like part of an X archive. Upload the "
        ".zip file exactly as X sent it, without changing the files inside."
    ),
    "invalid_id": (
        "The file %(member)s contains an account id that is not a valid X id. "
        "Download your archive from X again and upload it without changes."
    ),
    "inflated_too_large": (
        "The archive's follower and following lists unpack to more than %(limit)s, "
        "more than this service accepts. If this is your genuine X archive, contact "
        "the people who run this service."
    ),
    "compression_ratio_too_high": (
        "The archive unpacks to far more data than a genuine X archive would, so it "
        "was refused for safety. Upload the .zip file exactly as X sent it."
    ),
    "archive_too_large": (
        "The archive is larger than %(limit)s, the most this service accepts. Upload "
        "only account.js, follower.js and following.js from its data folder instead "
        "(the web page can do this for you)."
    ),
    "too_many_members": (
        "The archive contains more than %(limit)s files, far more than an X archive "
        "has. Upload the .zip file exactly as X sent it."
    ),
    "too_many_edges": (
        "The archive lists more than %(limit)s follow relationships, more than this "
        "service accepts at once. Contact the people who run this service."
    ),
    "unreadable": (
        "The archive could not be read. Check that the file exists and can be "
        "opened, then try again."
    ),
}
"""Error code → English message template (a gettext msgid with ``%(name)s`` params)."""


def human_bytes(size: int) -> str:
    """Format a byte count for people, in binary units ("16 GiB", "512 KiB")."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_count(count: int) -> str:
    """Format a count for people with thousands separators ("1,000,000")."""
    return f"{count:,}"
