"""The one thread that runs the model for `picolm serve`: replies take turns, one piece each (round-robin), so a long
reply shares the model instead of holding it, and a client that stops reading stops getting turns. A new reply takes
the next turn, then waits its turn with the others.

A piece is what one `next()` of the reply yields: one token for left-to-right models; the diffusion families
denoise the whole reply in its first turn.
"""

from __future__ import annotations

import queue
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator

from picolm.errors import PicolmError

Event = tuple[str, dict]  # (event name, its data): ("message", {"text": ...}), ("done", {}), ("failed", {"error": ...})


def failure(exc: Exception) -> str:
    """What a client is told when its reply raised: a user error as it is, anything else named as a failure."""
    return str(exc) if isinstance(exc, PicolmError) else f"the reply failed ({type(exc).__name__}: {exc})"


class Reply:
    """One request's reply: the model thread puts its events in a bounded outbox, the client's thread takes them
    out and sends them; `gone` once that client has left (or is dropped), so the model stops writing for it."""

    def __init__(self, pieces: Iterator[str], backlog: int, scheduler: Scheduler):
        self.pieces, self.scheduler = pieces, scheduler
        self.outbox: queue.Queue[Event] = queue.Queue(backlog)
        self.gone = False

    def events(self, poll: float = 0.5) -> Iterator[Event]:
        """The reply's events as they come, to its `done` or `failed` event."""
        while True:
            try:
                event = self.outbox.get(timeout=poll)
            except queue.Empty:
                if self.scheduler.closed:
                    yield "failed", {"error": "the server is shutting down"}
                    return
                continue
            self.scheduler.wake()  # the outbox has room again
            yield event
            if event[0] != "message":
                return

    def leave(self) -> None:
        self.gone = True
        self.scheduler.wake()


class Scheduler:
    """At most `limit` replies in progress, advanced in turn by one thread; a reply whose client has not taken its
    last `backlog` events skips its turns until it does."""

    def __init__(self, limit: int, backlog: int = 32):
        self.limit, self.backlog = limit, backlog
        self.replies: deque[Reply] = deque()
        self.changed = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="picolm-model", daemon=True)
        self.thread.start()

    def submit(self, pieces: Iterator[str]) -> Reply | None:
        """Queue a reply (a generator, not started yet); None when `limit` replies are already in progress."""
        with self.changed:
            if self.closed or len(self.replies) >= self.limit:
                return None
            reply = Reply(pieces, self.backlog, self)
            self.replies.appendleft(reply)  # the next turn is its: the first token comes at once
            self.changed.notify()
            return reply

    def wake(self) -> None:
        with self.changed:
            self.changed.notify()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify()
        self.thread.join()

    def _run(self) -> None:
        while (reply := self._next()) is not None:
            self._turn(reply)
        for reply in self.replies:
            reply.pieces.close()

    def _next(self) -> Reply | None:
        """The next reply whose turn it is; waits while none can take one; None once closed."""
        with self.changed:
            while not self.closed:
                for _ in range(len(self.replies)):
                    reply = self.replies.popleft()
                    if reply.gone:
                        reply.pieces.close()
                        continue
                    self.replies.append(reply)
                    if not reply.outbox.full():
                        return reply
                self.changed.wait()
        return None

    def _turn(self, reply: Reply) -> None:
        """One piece of the reply, or its end: `done`, or `failed` with the reason (never silence)."""
        try:
            event: Event = ("message", {"text": next(reply.pieces)})
        except StopIteration:
            event = ("done", {})
        except Exception as exc:  # noqa: BLE001  # a sampling failure ends this reply, never the server
            if not isinstance(exc, PicolmError):
                traceback.print_exc(file=sys.stderr)
            event = ("failed", {"error": failure(exc)})
        if event[0] != "message":
            with self.changed:
                self.replies.remove(reply)
        reply.outbox.put_nowait(event)  # only this thread puts, and only into an outbox with room
