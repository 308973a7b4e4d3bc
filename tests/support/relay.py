"""A TCP relay to put in front of a real server: counts bytes and injects faults.

The relay runs its own asyncio event loop in a background thread, so synchronous tests and
benchmarks can use it directly. Counts are raw TCP payload bytes (HTTP headers included).
"Down" is target -> client (responses), "up" is client -> target (requests).

Faults, both adjustable while the relay runs:
- `rate_limit_bytes_per_s`: a token bucket shared by all connections throttles the down
  direction.
- `cut_after_bytes`: once a connection has relayed that many down bytes, the relay resets both
  sides of it (RST, not FIN), as a network failure mid-body would.
- `corrupt_at_byte` flips one down byte; `stall_after_bytes` holds every connection silent
  after that many down bytes, until `resume()`.

Faults the relay acts out itself, for failures and answers no real server gives on demand
(`dropped_requests` counts the requests it dropped):
- `drop_reused`: a request on a connection that already carried a response is dropped (both
  sides reset, no answer), as when an origin's idle timeout closed a kept-alive connection
  just as the client reused it.
- `drop_next_requests`: the next N connections are reset on their first request, before any
  byte of an answer and without reaching the target.
- `answer`: each request is answered with `answer(request head)` (raw HTTP/1.1 bytes, then the
  connection closes) and the target is never contacted: a redirect, a 206 to a GET without
  Range.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import Protocol

from tests.support.procs import Stoppable

# Large reads keep per-chunk overhead low enough for ~1 GB/s; asyncio never reads more than
# 256 KiB at once anyway.
_MAX_CHUNK = 256 * 1024
# With a rate limit, chunks hold about this much time's worth of bytes so throttled output
# flows smoothly instead of in big bursts.
_CHUNK_SECONDS = 0.005
# Credit the bucket keeps for idle time. It absorbs sleep overshoot so the average rate stays
# on target, while bounding bursts to rate * this.
_BURST_SECONDS = 0.02
# Before a cut, how long to wait for the client to take the bytes it is owed.
_CUT_FLUSH_TIMEOUT = 2.0


class _Cut(Exception):
    """The connection reached cut_after_bytes."""


class _Dropped(Exception):
    """A request the relay drops unanswered."""


class _TokenBucket:
    """Paces bytes at a rate that may change at any time (read from `Relay` on each call).

    Tracks the time at which the bytes granted so far will have been "paid for"; callers sleep
    until then. Only used from the relay's event loop thread, so no locking.
    """

    def __init__(self) -> None:
        self._rate: float | None = None
        self._paid_until = 0.0

    async def take(self, rate: float | None, nbytes: int) -> None:
        if rate is None:
            return
        now = time.monotonic()
        if rate != self._rate:
            self._rate = rate
            self._paid_until = now
        self._paid_until = max(self._paid_until, now - _BURST_SECONDS) + nbytes / rate
        delay = self._paid_until - now
        if delay > 0:
            await asyncio.sleep(delay)


class Relay(Stoppable):
    """Relays TCP connections from a local port to `target_host:target_port`."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        rate_limit_bytes_per_s: float | None = None,
        cut_after_bytes: int | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        # Plain attributes read by the loop thread on every chunk: assigning them from any
        # thread takes effect from the next chunk on, for open connections too.
        self.rate_limit_bytes_per_s = rate_limit_bytes_per_s
        self.cut_after_bytes = cut_after_bytes
        # Response-stream offset (per connection, headers included) of a byte to flip in
        # transit, and of the point after which the relay goes silent without closing.
        self.corrupt_at_byte: int | None = None
        self.stall_after_bytes: int | None = None
        self._resumed = asyncio.Event()
        self.drop_reused = False
        self.drop_next_requests = 0
        self.answer: Callable[[bytes], bytes] | None = None
        self._dropped = 0
        self._counter_lock = threading.Lock()
        self._bytes_down = 0
        self._bytes_up = 0
        self._connections = 0
        self._request_heads: list[bytes] = []
        self._bucket = _TokenBucket()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._address: tuple[str, int] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Start listening on a free port; returns the (host, port) clients should connect to."""
        if self._address is not None:
            return self._address
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="relay", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._server = asyncio.run_coroutine_threadsafe(
                asyncio.start_server(self._handle, self.listen_host, 0), loop
            ).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        host, port = self._server.sockets[0].getsockname()[:2]
        self._address = (host, port)
        return self._address

    def stop(self) -> None:
        """Close the listener, reset open connections and end the loop thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = self._server = None
        self._address = None

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> Relay:
        self.start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("relay is not running")
        return self._address

    @property
    def endpoint(self) -> str:
        """`http://host:port` of the relay, for HTTP clients."""
        host, port = self.address
        return f"http://{host}:{port}"

    # -- counters ----------------------------------------------------------------------------

    @property
    def bytes_down(self) -> int:
        """Bytes relayed target -> client since start or the last reset."""
        with self._counter_lock:
            return self._bytes_down

    @property
    def bytes_up(self) -> int:
        """Bytes relayed client -> target since start or the last reset."""
        with self._counter_lock:
            return self._bytes_up

    @property
    def connections(self) -> int:
        """Client connections accepted since start or the last reset."""
        with self._counter_lock:
            return self._connections

    @property
    def request_heads(self) -> list[bytes]:
        """The first chunk (up to 8 KiB) each connection sent to the target: request heads."""
        with self._counter_lock:
            return list(self._request_heads)

    @property
    def dropped_requests(self) -> int:
        """Requests dropped unanswered by `drop_reused` or `drop_next_requests`."""
        with self._counter_lock:
            return self._dropped

    def resume(self) -> None:
        """End the stall: stalled connections go on, and no later one stalls."""
        self.stall_after_bytes = None
        resumed, self._resumed = self._resumed, asyncio.Event()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(resumed.set)

    def reset_counters(self) -> None:
        with self._counter_lock:
            self._bytes_down = self._bytes_up = self._connections = self._dropped = 0
            self._request_heads.clear()

    # -- relaying ----------------------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        with self._counter_lock:
            self._connections += 1
        try:
            await self._relay(client_r, client_w)
        except asyncio.CancelledError:
            # Only stop() cancels us. Ending cancelled would make asyncio 3.12.1's stream
            # callback raise and log a spurious traceback.
            pass
        finally:
            self._handlers.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        target_w: asyncio.StreamWriter | None = None
        clean = False
        try:
            if self.answer is not None or self.drop_next_requests > 0:
                clean = await self._act_out(client_r, client_w)
                return
            target_r, target_w = await asyncio.open_connection(self.target_host, self.target_port)
            answered = asyncio.Event()  # set once a byte of a response went down
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(client_r, target_w, down=False, answered=answered))
                group.create_task(self._pump(target_r, client_w, down=True, answered=answered))
            clean = True
        except* _Cut:
            await _flushed(client_w)
        except* _Dropped:
            with self._counter_lock:
                self._dropped += 1
        except* OSError:
            pass  # a peer reset or refused: passed on below as a reset of the other side(s)
        finally:
            for writer in (client_w, target_w):
                if writer is not None:
                    _close(writer, reset=not clean)

    async def _act_out(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> bool:
        """Answer or drop the connection's first request without the target; True if answered."""
        try:
            head = await client_r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False
        with self._counter_lock:
            self._request_heads.append(head[:8192])
            self._bytes_up += len(head)
            dropped = self.drop_next_requests > 0
            if dropped:
                self.drop_next_requests -= 1
                self._dropped += 1
        if dropped or self.answer is None:
            return False
        reply = self.answer(head)
        with self._counter_lock:
            self._bytes_down += len(reply)
        client_w.write(reply)
        await client_w.drain()
        return True

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        down: bool,
        answered: asyncio.Event,
    ) -> None:
        relayed = 0
        while True:
            rate = self.rate_limit_bytes_per_s if down else None
            size = (
                _MAX_CHUNK
                if rate is None
                else max(1024, min(_MAX_CHUNK, int(rate * _CHUNK_SECONDS)))
            )
            data = await reader.read(size)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if down:
                answered.set()
            elif self.drop_reused and answered.is_set():
                raise _Dropped  # the next request on a kept-alive connection
            cut = self.cut_after_bytes if down else None
            if cut is not None:
                data = data[: max(0, cut - relayed)]
            corrupt = self.corrupt_at_byte if down else None
            if corrupt is not None and relayed <= corrupt < relayed + len(data):
                flipped = bytearray(data)
                flipped[corrupt - relayed] ^= 0xFF
                data = bytes(flipped)
            stall = self.stall_after_bytes if down else None
            if stall is not None and relayed + len(data) > stall:
                before = max(0, stall - relayed)
                with self._counter_lock:
                    self._bytes_down += before
                writer.write(data[:before])
                data, relayed = data[before:], relayed + before
                # Silent until resume() (then the rest goes on), the peer gives up or stop().
                await self._resumed.wait()
            await self._bucket.take(rate, len(data))
            # Count before writing: a reader of the counters that has just received the bytes
            # (in another thread) must already see them counted.
            with self._counter_lock:
                if down:
                    self._bytes_down += len(data)
                else:
                    if relayed == 0:
                        self._request_heads.append(bytes(data[:8192]))
                    self._bytes_up += len(data)
            writer.write(data)
            relayed += len(data)
            if cut is not None and relayed >= cut:
                raise _Cut
            # Backpressure: waits while the peer is slow, so the reader side stops reading.
            await writer.drain()


async def _flushed(writer: asyncio.StreamWriter) -> None:
    """Wait until the peer has received all written bytes, so a reset does not drop any.

    A reset discards data still queued in our kernel send buffer, so wait for that queue to
    empty too, not just asyncio's buffer.
    """
    deadline = time.monotonic() + _CUT_FLUSH_TIMEOUT
    while time.monotonic() < deadline:
        if writer.transport.is_closing():
            return  # the client went away: nothing left to deliver
        if writer.transport.get_write_buffer_size() == 0 and _unacked(writer) == 0:
            return
        await asyncio.sleep(0.001)


def _unacked(writer: asyncio.StreamWriter) -> int:
    """Bytes in the socket's kernel send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    fd = writer.get_extra_info("socket").fileno()
    queued: int = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return queued


def _close(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Linger 0 makes close() send RST rather than FIN: the peer sees a reset.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


class RelayFactory(Protocol):
    """Signature of the `relay_factory` fixture: makes a started `Relay`."""

    def __call__(
        self,
        target_host: str,
        target_port: int,
        *,
        rate_limit_bytes_per_s: float | None = None,
        cut_after_bytes: int | None = None,
    ) -> Relay: ...


def request_target(head: bytes) -> str:
    """The request target of a request head (``/bucket/key?query`` or absolute-form)."""
    return head.split(b" ", 2)[1].decode("ascii")


def raw_response(status: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One HTTP/1.1 response as bytes for `Relay.answer`; the relay closes after it."""
    lines = [f"HTTP/1.1 {status} Relay", *(f"{k}: {v}" for k, v in headers.items())]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
