"""Watching for the client to leave: a cancellable call, and the SSE response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from axione_asgi.errors import AxioneError

__all__ = ["ClientGone", "EventStreamResponse", "StreamCut", "unless_disconnected"]

T = TypeVar("T")


class ClientGone(Exception):
    """The client went away before the answer was ready."""


class StreamCut(AxioneError):
    """503, as a stream's last event: the server stopped the stream (it is shutting down).

    uvicorn cancels the requests still running when the shutdown's grace
    period ends (before the lifespan stops the runtime). A stream's generator
    cancelled while it waits for the upstream yields its dialect's error event
    for this, then lets the cancellation go on: `EventStreamResponse` sends
    that event like any other, then the connection closes. When it is the
    client that left, the event is yielded too, and goes nowhere.
    """

    status = 503
    default_code = "server_shutting_down"

    def __init__(self) -> None:
        super().__init__(
            "The stream was stopped before its end: the gateway is shutting down; retry the request"
        )


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# How long a request runs before its client is watched. Watching costs a task
# per request; answers faster than this (cache hits, small local models) never
# pay for one, and a client that leaves a slow answer is still seen within it.
WATCH_AFTER_S = 0.05


class _DisconnectWatch:
    """Cancels the current task when the client disconnects.

    Only for after the body was read: from then on `receive` says nothing but
    the disconnect. A bare asyncio task watches, not a task group: this runs on
    every request, and the gateway is served by asyncio servers. The task is
    made only once the request has run for `WATCH_AFTER_S`.
    """

    __slots__ = ("_receive", "_task", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive, after_s: float = WATCH_AFTER_S) -> None:
        self.gone = False
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            after_s, self._watch
        )

    def _watch(self) -> None:
        self._timer = None
        self._watcher = asyncio.ensure_future(_until_disconnect(self._receive))
        self._watcher.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled() and watcher.exception() is None and self._task is not None:
            self.gone = True
            self._task.cancel()

    def caught(self) -> bool:
        """In an `except CancelledError`: whether the disconnect (only) caused it."""
        return self.gone and self._task is not None and self._task.uncancel() == 0

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.remove_done_callback(self._on_disconnect)
            self._watcher.cancel()


async def unless_disconnected(receive: Receive, work: Callable[[], Awaitable[T]]) -> T:
    """`work()`, cancelled at once if the client disconnects meanwhile (`ClientGone`)."""
    watch = _DisconnectWatch(receive)
    try:
        return await work()
    except asyncio.CancelledError:
        if watch.caught():
            raise ClientGone from None
        raise
    finally:
        watch.stop()


class EventStreamResponse(Response):
    """A `text/event-stream` answer, each event sent as it is produced.

    Starlette's `StreamingResponse` runs two tasks in a task group per stream;
    this sends from the request's own task and lets one watcher cancel it when
    the client leaves, which closes the events' generator (and through it the
    upstream stream) at once.
    """

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        # Response's own __init__ renders a body; this one has none to render.
        self.events = events
        self.background = None
        self.status_code = 200
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        watch = _DisconnectWatch(receive)
        try:
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.caught():
                raise
        finally:
            watch.stop()
            closer = getattr(self.events, "aclose", None)
            if closer is not None:
                await closer()
