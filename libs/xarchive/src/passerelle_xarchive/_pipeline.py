"""Overlap inflating with parsing: run a byte-piece generator in a helper thread.

zlib's inflate and crc32 release the GIL, so a producer thread inflating the
next piece runs truly in parallel with the parser working on the current one.
The queue is bounded (``depth`` pieces), so memory stays bounded too.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Final

_DONE: Final = object()
_POLL: Final = 0.05


def prefetch(source: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """Yield ``source``'s items, produced ahead in a thread; errors are re-raised here.

    The source is consumed and closed only by the helper thread. Stopping early
    (an exception in the consumer, or closing this generator) stops the thread
    and waits for it, so the underlying file is never read by two threads.
    """
    pipe: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object, error: BaseException | None) -> bool:
        while not stop.is_set():
            try:
                pipe.put((item, error), timeout=_POLL)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for piece in source:
                if not put(piece, None):
                    return
            put(_DONE, None)
        except BaseException as exc:  # noqa: BLE001 - handed over to the consumer thread
            put(None, exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="xarchive-inflate", daemon=True)
    worker.start()
    try:
        while True:
            item, error = pipe.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                pipe.get(timeout=_POLL)
        worker.join()
