"""Background prefetching: a thread fills a bounded queue ahead of the consumer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import queue
import threading
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_END = object()  # Marks normal exhaustion of the source.
_POLL_SECONDS = 0.05  # How often a blocked producer checks for close().


class _Failure:
    """Carries an exception from the producer thread to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def _put(q: queue.Queue, stop: threading.Event, item: Any) -> bool:
    """Blocks until there is room or `stop` is set; returns False if stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _produce(source: Iterator[Any], transfer_fn: Callable[[Any], Any] | None,
             q: queue.Queue, stop: threading.Event) -> None:
    """Body of the producer thread."""
    try:
        for item in source:
            if transfer_fn is not None:
                item = transfer_fn(item)
            if not _put(q, stop, item):
                return
        _put(q, stop, _END)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by the consumer)
        _put(q, stop, _Failure(e))


class Prefetcher(Generic[T]):
    """Iterates over `source` while a daemon thread produces up to `depth` items ahead.

    With depth 0 there is no thread and items are produced on demand. Exceptions
    raised by the source (or `transfer_fn`) re-raise in the consumer. Call
    `close()` (or use it as a context manager) to stop the thread early; it is
    also stopped when the source is exhausted.
    """

    def __init__(self, source: Iterator[T], depth: int = 2,
                 transfer_fn: Callable[[T], Any] | None = None):
        """Starts prefetching.

        Args:
            source: Items to produce (consumed only by the background thread).
            depth: Maximum number of produced-but-unconsumed items.
            transfer_fn: Applied to each item in the background thread, e.g.
                `jax.device_put`, so host-to-device copies overlap with compute.
        """
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._source = source
        self._transfer_fn = transfer_fn
        self._closed = False
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            # The thread gets no reference to self, so a dropped Prefetcher can be
            # garbage collected and its __del__ can stop the thread.
            self._thread = threading.Thread(
                target=_produce, args=(source, transfer_fn, self._queue, self._stop),
                name="dks_jax-prefetch", daemon=True)
            self._thread.start()

    def __iter__(self) -> "Prefetcher[T]":
        return self

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        if self._thread is None:
            try:
                item = next(self._source)
            except StopIteration:
                self.close()
                raise
            return self._transfer_fn(item) if self._transfer_fn is not None else item
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    @property
    def thread_alive(self) -> bool:
        """Whether the background thread is still running."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Stops the background thread and releases the source. Idempotent.

        Args:
            timeout: Seconds to wait for the thread (it finishes the item it is
                producing first).
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            # Free a slot in case the producer is blocked on a full queue.
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout)
        if not self.thread_alive:
            close_source = getattr(self._source, "close", None)
            if close_source is not None:
                close_source()

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        # Best effort for iterators dropped without close(); the thread is a daemon anyway.
        try:
            self.close(timeout=0.0)
        except Exception:  # pylint: disable=broad-except
            pass
