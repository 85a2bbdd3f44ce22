"""Consume a streamed request from another thread or from asyncio.

``Generator.stream`` returns an iterator that runs the model inside ``next()``, so
the caller's thread does the work. The classes here run the same loop in a worker
thread and hand the events over through a queue, like transformers'
``TextIteratorStreamer``:

>>> stream = ThreadedStream(gen, "ROMEO:", max_new_tokens=40)
>>> for event in stream:                  # the worker thread generates meanwhile
...     print(event.text, end="")
>>> stream.results[0].finish_reason

>>> async for event in gen.astream("ROMEO:", max_new_tokens=40):   # or astream(gen, ...)
...     await websocket.send(event.text)

An exception raised in the worker (a bad request, a failing plugin, a full KV
cache) is raised again in the consumer, with its original type and traceback.
A consumer that stops early (``break``, :meth:`ThreadedStream.cancel`, a timeout)
stops the worker before its next decode step: the results then end with finish
reason ``"cancelled"``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import queue
import threading
from typing import Any, AsyncIterator, Callable, Iterator

from genkit.engine import GenerationResult, Generator, StreamEvent
from genkit.errors import ConfigError, GenerationError

logger = logging.getLogger("genkit")

_DONE = object()  # queued by the worker after the last event


class StreamTimeoutError(GenerationError, TimeoutError):
    """No event arrived from the worker thread within the consumer's timeout."""


class _Failure:
    """An exception raised in the worker, carried through the queue to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def _check_timeout(timeout: float | None) -> None:
    """Raise ConfigError unless ``timeout`` is None or a finite number of seconds > 0."""
    if timeout is None:
        return
    valid = (isinstance(timeout, numbers.Real) and not isinstance(timeout, bool)
             and math.isfinite(timeout) and timeout > 0)
    if not valid:
        raise ConfigError(
            f"invalid timeout={timeout!r} ({type(timeout).__name__}): expected a finite number of seconds > 0, "
            "e.g. timeout=30, or None to wait without limit"
        )


class _Worker:
    """Run one streamed request in a daemon thread and pass each item to ``deliver``.

    ``deliver`` receives every :class:`StreamEvent`, then either ``_DONE`` or a
    :class:`_Failure`. The stop flag is checked between events, so a stop request
    takes effect after the decode step in progress.
    """

    def __init__(self, generator: Generator, prompt: Any, config: Any, kwargs: dict[str, Any],
                 deliver: Callable[[object], None]):
        self._generator = generator
        self._request = (prompt, config, kwargs)
        self._deliver = deliver
        self._stop = threading.Event()
        self.results: list[GenerationResult] = []
        self.thread = threading.Thread(target=self._run, name="genkit-stream", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        prompt, config, kwargs = self._request
        try:
            stream = self._generator.stream(prompt, config, **kwargs)
            for event in stream:
                if self._stop.is_set():
                    break
                self._deliver(event)
            if self._stop.is_set():
                self.results = stream.cancel()
            else:
                self.results = stream.results
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the consumer, or it waits forever
            if self._stop.is_set():
                logger.error("streamed request failed after the consumer stopped it: %s", exc, exc_info=exc)
            self._deliver(_Failure(exc))
            return
        self._deliver(_DONE)


class ThreadedStream:
    """Generate in a worker thread and iterate over the :class:`StreamEvent` objects here.

    ``timeout`` (seconds, a finite number > 0, or None for no limit; anything else
    raises ConfigError) bounds the wait for each event. When it passes,
    :class:`StreamTimeoutError` is raised and the worker is asked to stop. An
    exception in the worker is raised again by the iteration. Leaving the loop
    early (``break``, an exception in the loop body) or calling :meth:`cancel`
    stops the worker after its current decode step. Use it as a context manager to
    stop the worker even when the iterator is kept alive elsewhere.

    ``results`` contains one :class:`GenerationResult` per prompt once the iteration
    has ended, normally or by cancelling.
    """

    def __init__(self, generator: Generator, prompt: Any, config: Any = None, *,
                 timeout: float | None = None, **kwargs: Any):
        _check_timeout(timeout)
        self.timeout = timeout
        self._queue: queue.Queue = queue.Queue()
        self._worker = _Worker(generator, prompt, config, kwargs, self._queue.put)
        self._finished = False
        self._worker.start()

    @property
    def results(self) -> list[GenerationResult]:
        return self._worker.results

    def __iter__(self) -> Iterator[StreamEvent]:
        try:
            while not self._finished:
                try:
                    item = self._queue.get(timeout=self.timeout)
                except queue.Empty:
                    self._finished = True
                    self._worker.stop()
                    raise StreamTimeoutError(
                        f"no token arrived within timeout={self.timeout} s; the request was cancelled. "
                        "Raise the timeout for a slow model or device"
                    ) from None
                if item is _DONE:
                    self._finished = True
                    self._worker.thread.join()  # the worker has delivered its last item and is returning
                elif isinstance(item, _Failure):
                    self._finished = True
                    self._worker.thread.join()
                    raise item.error
                else:
                    yield item
        finally:
            if not self._finished:
                self.cancel()

    def cancel(self, wait: bool = True) -> list[GenerationResult]:
        """Stop the worker after its current decode step and return the results so far.

        With ``wait``, the call blocks until the worker has stopped, for at most
        ``timeout`` seconds when one is set. Without it, the results may still be empty.
        """
        self._worker.stop()
        if wait and self._worker.thread is not threading.current_thread():
            self._worker.thread.join(self.timeout)
        self._finished = True
        return self.results

    def __enter__(self) -> ThreadedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._worker.thread.is_alive():
            self.cancel()


class AsyncGenerationStream:
    """Generate in a worker thread and iterate over the events with ``async for``.

    The worker hands each event to the event loop with ``call_soon_threadsafe``, so
    the loop stays free while tokens are generated. ``timeout``, errors and early
    exits behave as in :class:`ThreadedStream`. Leaving ``async for`` early stops the
    worker once the event loop closes the abandoned iterator, and ``async with`` (or
    :meth:`cancel`) stops it right away.
    """

    def __init__(self, generator: Generator, prompt: Any, config: Any = None, *,
                 timeout: float | None = None, **kwargs: Any):
        _check_timeout(timeout)
        self.timeout = timeout
        self._request = (generator, prompt, config, kwargs)
        self._worker: _Worker | None = None
        self._queue: asyncio.Queue | None = None
        self._finished = False

    @property
    def results(self) -> list[GenerationResult]:
        return self._worker.results if self._worker is not None else []

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        put = self._queue.put_nowait

        def deliver(item: object) -> None:
            try:
                loop.call_soon_threadsafe(put, item)
            except RuntimeError:
                # The event loop is closed, so no consumer can receive events: stop generating.
                self._worker.stop()

        generator, prompt, config, kwargs = self._request
        self._worker = _Worker(generator, prompt, config, kwargs, deliver)
        self._worker.start()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        if self._worker is None:
            self._start()
        try:
            while not self._finished:
                try:
                    item = await asyncio.wait_for(self._queue.get(), self.timeout)
                except asyncio.TimeoutError:
                    self._finished = True
                    self._worker.stop()
                    raise StreamTimeoutError(
                        f"no token arrived within timeout={self.timeout} s; the request was cancelled. "
                        "Raise the timeout for a slow model or device"
                    ) from None
                if item is _DONE:
                    self._finished = True
                    await asyncio.to_thread(self._worker.thread.join)
                elif isinstance(item, _Failure):
                    self._finished = True
                    await asyncio.to_thread(self._worker.thread.join)
                    raise item.error
                else:
                    yield item
        finally:
            if not self._finished:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    def cancel(self) -> None:
        """Ask the worker to stop after its current decode step; :meth:`wait_cancelled` waits for it."""
        self._finished = True
        if self._worker is not None:
            self._worker.stop()

    async def wait_cancelled(self) -> list[GenerationResult]:
        """Stop the worker, wait for it without blocking the event loop and return the results so far."""
        self.cancel()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.thread.join, self.timeout)
        return self.results

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._worker is not None and self._worker.thread.is_alive():
            await self.wait_cancelled()


def stream_in_thread(generator: Generator, prompt: Any, config: Any = None, *,
                     timeout: float | None = None, **kwargs: Any) -> ThreadedStream:
    """Start generating ``prompt`` in a worker thread; iterate the returned stream for the events."""
    return ThreadedStream(generator, prompt, config, timeout=timeout, **kwargs)


def astream(generator: Generator, prompt: Any, config: Any = None, *,
            timeout: float | None = None, **kwargs: Any) -> AsyncGenerationStream:
    """Return an async iterator of the events of ``prompt``; generation starts at the first ``async for`` step."""
    return AsyncGenerationStream(generator, prompt, config, timeout=timeout, **kwargs)
