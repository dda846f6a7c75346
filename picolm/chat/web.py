"""`picolm serve`: one local web page to chat with a model, the reply streamed token by token.

The standard library's HTTP server serves the page (`/`) and the replies (`/reply?message=...&temperature=...`) as
server-sent events: `data: {"text": piece}` per piece, then `event: done` with `{"seed": the reply's seed}`, or
`event: failed` with `{"error": why}` (bad settings, more new tokens than `--max-new-tokens-cap`, a sampling failure).
Each page served opens a conversation, kept on the server under an unguessable id the page sends with its messages
(`&conversation=...`; without one, a message is answered on its own): its earlier turns stay in the prompt, and when
they fill the context the oldest are dropped, the reply's events then starting with `event: notice` saying so. The
message `/reset` clears the conversation (`event: notice`, then `done`). At most `--conversations` are kept; the least
recently used is forgotten first. One thread runs the model; the
replies in progress (at most `--queue`; one more gets HTTP 503) take turns on it a token at a time
(picolm/chat/scheduler.py). At most `--connections` clients are served at once, each dropped when it has not sent its
whole request, or taken the next part of its reply, within `--client-timeout` seconds. A request whose Host header is
not this server's (DNS rebinding) gets HTTP 403.
"""

from __future__ import annotations

import errno
import html
import io
import ipaddress
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from itertools import chain
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from picolm.chat.limits import ServeLimits
from picolm.chat.scheduler import Event, Scheduler
from picolm.chat.session import CLEARED, ChatSession, Conversation
from picolm.config import SamplingOptions
from picolm.errors import PicolmError

SETTINGS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float}
LOOPBACK = ("localhost", "127.0.0.1", "::1")
EVERY_INTERFACE = ("", "0.0.0.0", "::")
SEND_BUFFER = 16 * 1024  # bytes the kernel holds for a client that stops reading, before its writes wait


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>picolm chat</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
#log { border: 1px solid #ccc; border-radius: 6px; padding: .5rem 1rem; min-height: 12rem; white-space: pre-wrap; }
.you { color: #1a4d8f; margin: .6rem 0 .2rem; } .model { margin: 0 0 .6rem; }
.notice, .seed { color: #777; font-size: .85rem; } .seed { margin: -.5rem 0 .6rem; }
form { display: flex; gap: .5rem; margin: 1rem 0; } #message { flex: 1; padding: .4rem; }
fieldset { display: flex; flex-wrap: wrap; gap: 1rem; border: 1px solid #ddd; } label { font-size: .9rem; }
input[type=number] { width: 5rem; }
</style></head><body data-conversation="__CONVERSATION__">
<h1>picolm chat</h1>
<p>__MODEL__</p>
<fieldset><legend>generation settings</legend>
<label>max new tokens <input type="number" id="max_new_tokens" min="1" max="__max_new_tokens_cap__"
  value="__max_new_tokens__"></label>
<label>temperature <input type="number" id="temperature" min="0" step="0.1" value="__temperature__"></label>
<label>top-k <input type="number" id="top_k" min="1" value="__top_k__"></label>
<label>top-p <input type="number" id="top_p" min="0" max="1" step="0.05" value="__top_p__"></label>
<label>repetition penalty <input type="number" id="repetition_penalty" min="0.1" step="0.1"
  value="__repetition_penalty__"></label>
</fieldset>
<div id="log"></div>
<form id="form"><input id="message" autocomplete="off" placeholder="Type a message" autofocus>
<button id="send">Send</button>
<button type="button" id="reset" title="the model forgets this conversation (or type /reset)">Reset</button>
</form>
<script>
const log = document.getElementById("log"), form = document.getElementById("form");
const box = document.getElementById("message"), buttons = [...document.querySelectorAll("button")];
const line = (kind, text) => {
  const div = document.createElement("div");
  div.className = kind;
  div.textContent = text;
  return div;
};
const send = (message) => {
  const you = message === "/reset" ? null : line("you", "you: " + message);  // a reset has no reply, only a notice
  const reply = you && line("model", "");
  if (you) { reply.dataset.done = "false"; log.append(you, reply); }
  const note = (text) => { if (you) you.before(line("notice", text)); else log.append(line("notice", text)); };
  const query = new URLSearchParams({message, conversation: document.body.dataset.conversation});
  for (const name of ["max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty"]) {
    const value = document.getElementById(name).value;
    if (value !== "") query.set(name, value);
  }
  buttons.forEach((button) => { button.disabled = true; });
  const source = new EventSource("/reply?" + query);
  const finish = () => {
    source.close();
    if (reply) reply.dataset.done = "true";
    buttons.forEach((button) => { button.disabled = false; });
  };
  const fail = (why) => { if (reply) reply.textContent += "[" + why + "]"; else note("[" + why + "]"); finish(); };
  source.onmessage = (e) => { reply.textContent += JSON.parse(e.data).text; };
  source.addEventListener("notice", (e) => note(JSON.parse(e.data).text));
  source.addEventListener("done", (e) => {
    const seed = JSON.parse(e.data).seed;
    if (reply && seed !== undefined) { reply.dataset.seed = seed; reply.after(line("seed", "seed " + seed)); }
    finish();
  });
  source.addEventListener("failed", (e) => fail(JSON.parse(e.data).error));
  source.onerror = () => fail("no reply: the server is busy or gone");
};
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const message = box.value.trim();
  if (!message) return;
  box.value = "";
  send(message);
});
document.getElementById("reset").addEventListener("click", () => send("/reset"));
</script></body></html>
"""


def render_page(session: ChatSession, limits: ServeLimits, conversation: str = "") -> str:
    """The page with the model's name, its conversation's id and the settings filled in, every value HTML-escaped."""
    values = {"MODEL": f"{session.loaded.path} ({session.template} template)", "CONVERSATION": conversation,
              "max_new_tokens_cap": limits.max_new_tokens_cap,
              **{name: getattr(session.options, name) for name in SETTINGS}}
    return re.sub(r"__(\w+)__", lambda m: html.escape("" if values[m[1]] is None else str(values[m[1]])), PAGE)


def request_options(session: ChatSession, query: dict[str, list[str]], limits: ServeLimits) -> SamplingOptions:
    """The session's settings with the page's values on top."""
    changes = {}
    for name, kind in SETTINGS.items():
        if query.get(name, [""])[0] != "":
            try:
                changes[name] = kind(query[name][0])
            except ValueError:
                raise PicolmError(f"not a number: {query[name][0]!r}", field=name) from None
    options = replace(session.options, **changes)
    session.generator.check(options)
    limits.check(options)
    return options


class Conversations:
    """The conversations of the pages served, each under an unguessable id (a page of another site cannot read it
    from this one's page, so cannot take part in its conversation); beyond `limit`, the least recently used is
    forgotten."""

    def __init__(self, limit: int):
        self.limit, self.opened = limit, 0
        self.kept: OrderedDict[str, Conversation] = OrderedDict()
        self.lock = threading.Lock()

    def open(self) -> str:
        """A new conversation's id."""
        with self.lock:
            self.opened += 1
            key = secrets.token_urlsafe(16)
            self.kept[key] = Conversation(label=f"conversation {self.opened}")
            while len(self.kept) > self.limit:
                self.kept.popitem(last=False)
            return key

    def find(self, key: str) -> Conversation | None:
        """The conversation with this id; None for no id (a message answered on its own)."""
        if not key:
            return None
        with self.lock:
            if key not in self.kept:
                raise PicolmError(f"this conversation is no longer on the server (it keeps the {self.limit} used "
                                  "last, --conversations): reload the page to start a new one", field="conversation")
            self.kept.move_to_end(key)
            return self.kept[key]


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` -> `::1`, `LocalHost.:80` -> `localhost`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else ""
    return (header.rsplit(":", 1)[0] if header.count(":") == 1 else header).rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(header: str | None, host: str) -> bool:
    """Whether a Host header names this server: a loopback name or the --host it listens on, and when it listens on
    every interface, this machine's name or any IP address. A page that DNS-rebinds a name of its own to this
    address (to read replies from a browser) sends that name, and is refused."""
    name = host_name(header or "")
    if not name:
        return False
    if name in LOOPBACK or name == host.strip("[]").lower().rstrip("."):
        return True
    return host in EVERY_INTERFACE and (name == socket.gethostname().lower() or is_address(name))


class Deadline(io.RawIOBase):
    """A connection's bytes in, each read waiting only for what is left of `seconds` from now: a client that
    trickles its request a byte at a time is dropped as surely as one that sends nothing."""

    def __init__(self, connection: socket.socket, seconds: float):
        self.connection, self.end = connection, time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took longer than --client-timeout")
        self.connection.settimeout(left)
        return self.connection.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """The page (`/`) and the replies (`/reply`) of `server.session`; anything else is 404."""

    server: Server

    def setup(self):
        self.timeout = self.server.limits.client_timeout  # the whole request, then every write
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        super().setup()
        self.rfile = io.BufferedReader(Deadline(self.connection, self.timeout))

    def log_message(self, format, *args):  # quiet: the terminal shows the address only
        pass

    def do_GET(self):
        self.connection.settimeout(self.timeout)
        if not host_allowed(self.headers.get("Host"), self.server.host):
            self._plain(403, f"Host {self.headers.get('Host', '')!r} is not this server: open it as localhost, "
                             "127.0.0.1 or [::1], or as the --host it listens on")
            return
        url = urlparse(self.path)
        if url.path == "/":
            page = render_page(self.server.session, self.server.limits, self.server.conversations.open())
            self._plain(200, page, "text/html")
        elif url.path == "/reply":
            self._reply(parse_qs(url.query))
        else:
            self._plain(404, "not found")

    def _plain(self, status: int, text: str, kind: str = "text/plain") -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def _events(self, events: Iterable[Event]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for name, data in events:
            self.wfile.write(((f"event: {name}\n" if name != "message" else "") + f"data: {json.dumps(data)}\n\n")
                             .encode())

    def _reply(self, query: dict[str, list[str]]) -> None:
        session, limits = self.server.session, self.server.limits
        message = query.get("message", [""])[0]
        try:
            conversation = self.server.conversations.find(query.get("conversation", [""])[0])
            if message.strip() == "/reset":
                if conversation is not None:
                    session.reset(conversation)
                self._events([("notice", {"text": CLEARED}), ("done", {})])
                return
            request = session.request(message, conversation if conversation is not None else Conversation(),
                                      request_options(session, query, limits))
        except PicolmError as exc:
            self._events([("failed", {"error": str(exc)})])
            return
        reply = self.server.scheduler.submit(session.answer(request))
        if reply is None:
            self._plain(503, f"busy: the reply queue (--queue {limits.queue}) is full; try again shortly")
            return
        notice, seed = session.notice(request), request.options.seed
        try:
            self._events(chain([("notice", {"text": notice})] if notice else [],
                               ((name, {"seed": seed} if name == "done" else data) for name, data in reply.events())))
        finally:  # done, or the client left or stopped reading (a write past --client-timeout raises)
            reply.leave()


class Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer serving at most `limits.connections` clients at once (the next wait in the listen
    backlog), one model thread for the replies, and quiet about clients that leave."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, session: ChatSession, host: str, port: int, limits: ServeLimits):
        self.session, self.host, self.limits = session, host, limits
        self.conversations = Conversations(limits.conversations)
        self.slots = threading.BoundedSemaphore(limits.connections)
        self.scheduler = Scheduler(limits.queue)  # stopped by server_close, also when listening fails
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)

    def process_request(self, request, client_address):
        self.slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def server_close(self):
        super().server_close()
        self.scheduler.close()


def make_server(session: ChatSession, host: str = "127.0.0.1", port: int = 8000,
                limits: ServeLimits | None = None) -> Server:
    limits = limits or ServeLimits()
    limits.check(session.options)
    if not 0 <= port <= 65535:
        raise PicolmError(f"must be 0 to 65535 (got {port})", field="--port")
    try:
        return Server(session, host, port, limits)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PicolmError(f"port {port} is in use; choose another with --port", field="--port") from None
        raise PicolmError(f"cannot listen on {host}:{port} ({exc.strerror})", field="--port") from None
