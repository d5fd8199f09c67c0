"""The scheduler's end of the front's pipe, read by a thread of its own.

A message is read off the pipe only while someone calls `recv`; a sender writing a message
larger than the pipe's buffer (a request carrying an image's pixels: megabytes) is blocked
until the whole message is read. Read from the scheduler loop between steps, such a pipe
lets one request through per step: the sender pickles its next message after the last one
was read, and by then the loop has moved on to its step. The reader thread drains the pipe
as fast as the front writes, so every request the front sent during a step is waiting when
the step ends, and a step's prefill batches them together."""

from __future__ import annotations

import queue
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional

from radixlm.ipc.messages import RpcReq


class _Closed:
    """Queued when reading ends with an error (the pipe's end, a message that cannot be
    unpickled): `error` is re-raised in the consumer, as if it had read the pipe itself."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class PipeInbox:
    """Messages of `conn` in arrival order, read by a daemon thread started on first use.
    Invariants: only that thread reads `conn`; it stops after the shutdown RPC (which it
    queues) or at the first read error, which `wait` / `take_ready` then raise (EOFError when
    the front is gone)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._reading = threading.Event()  # set while the thread is inside a message
        self._thread: Optional[threading.Thread] = None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._read_loop, daemon=True, name="radixlm-inbox")
            self._thread.start()

    def _read_loop(self) -> None:
        while True:
            try:
                self.conn.poll(None)  # wait for data outside `_reading`
                self._reading.set()
                msg = self.conn.recv()
            except BaseException as exc:  # EOF, a broken pipe, a message that fails to unpickle
                self._queue.put(_Closed(exc))
                self._reading.clear()
                return
            self._queue.put(msg)
            self._reading.clear()
            if isinstance(msg, RpcReq) and msg.method == "shutdown":
                return

    def wait(self, timeout: Optional[float], idle: Callable[[], None]) -> Any:
        """The next message, calling `idle()` after every `timeout` seconds without one."""
        self._start()
        while True:
            try:
                return _opened(self._queue.get(timeout=timeout))
            except queue.Empty:
                idle()

    def take_ready(self) -> Optional[Any]:
        """The next message if one has arrived: queued, being read, or with bytes in the pipe
        (then it waits for the thread to finish reading it); None when the pipe is quiet."""
        self._start()
        if self._reading.is_set() or self._pipe_has_data():
            return _opened(self._queue.get())
        try:  # the thread queues a message before it clears `_reading`: seen here if it was missed above
            return _opened(self._queue.get_nowait())
        except queue.Empty:
            return None

    def _pipe_has_data(self) -> bool:
        try:
            return self.conn.poll(0)
        except (EOFError, OSError):
            return True  # the thread queues the error


def _opened(item: Any) -> Any:
    if isinstance(item, _Closed):
        raise item.error
    return item
