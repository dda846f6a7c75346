"""`picolm serve`: one local web page to chat with a model, the reply streamed token by token.

The standard library's ThreadingHTTPServer serves the page (`/`) and the replies (`/reply?message=...&
temperature=...`) as server-sent events: `data: {"text": piece}` per piece, then `event: done`. One reply is
generated at a time.
"""

from __future__ import annotations

import errno
import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from picolm.chat.session import ChatSession
from picolm.errors import PicolmError

SETTINGS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>picolm chat</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
#log { border: 1px solid #ccc; border-radius: 6px; padding: .5rem 1rem; min-height: 12rem; white-space: pre-wrap; }
.you { color: #1a4d8f; margin: .6rem 0 .2rem; } .model { margin: 0 0 .6rem; }
form { display: flex; gap: .5rem; margin: 1rem 0; } #message { flex: 1; padding: .4rem; }
fieldset { display: flex; flex-wrap: wrap; gap: 1rem; border: 1px solid #ddd; } label { font-size: .9rem; }
input[type=number] { width: 5rem; }
</style></head><body>
<h1>picolm chat</h1>
<p>__MODEL__</p>
<fieldset><legend>generation settings</legend>
<label>max new tokens <input type="number" id="max_new_tokens" min="1" value="__max_new_tokens__"></label>
<label>temperature <input type="number" id="temperature" min="0" step="0.1" value="__temperature__"></label>
<label>top-k <input type="number" id="top_k" min="1" value="__top_k__"></label>
<label>top-p <input type="number" id="top_p" min="0" max="1" step="0.05" value="__top_p__"></label>
<label>repetition penalty <input type="number" id="repetition_penalty" min="0.1" step="0.1"
  value="__repetition_penalty__"></label>
</fieldset>
<div id="log"></div>
<form id="form"><input id="message" autocomplete="off" placeholder="Type a message" autofocus>
<button id="send">Send</button></form>
<script>
const log = document.getElementById("log"), form = document.getElementById("form"), box = document.getElementById("message");
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const message = box.value.trim();
  if (!message) return;
  box.value = "";
  const you = document.createElement("div"); you.className = "you"; you.textContent = "you: " + message;
  const reply = document.createElement("div"); reply.className = "model"; reply.dataset.done = "false";
  log.append(you, reply);
  const query = new URLSearchParams({message});
  for (const name of ["max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty"]) {
    const value = document.getElementById(name).value;
    if (value !== "") query.set(name, value);
  }
  document.getElementById("send").disabled = true;
  const source = new EventSource("/reply?" + query);
  const finish = () => { source.close(); reply.dataset.done = "true"; document.getElementById("send").disabled = false; };
  source.onmessage = (e) => { reply.textContent += JSON.parse(e.data).text; };
  source.addEventListener("done", finish);
  source.addEventListener("failed", (e) => { reply.textContent += "[" + JSON.parse(e.data).error + "]"; finish(); });
  source.onerror = finish;
});
</script></body></html>
"""


def render_page(session: ChatSession) -> str:
    page = PAGE.replace("__MODEL__", f"{session.loaded.path} ({session.template} template)")
    for name in SETTINGS:
        value = getattr(session.options, name)
        page = page.replace(f"__{name}__", "" if value is None else str(value))
    return page


def request_options(session: ChatSession, query: dict[str, list[str]]):
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
    return options


def make_handler(session: ChatSession):
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # quiet: the terminal shows the address only
            pass

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/":
                body = render_page(session).encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif url.path == "/reply":
                self._reply(parse_qs(url.query))
            else:
                self.send_error(404)

        def _event(self, data: dict, event: str | None = None) -> None:
            self.wfile.write(((f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n").encode())
            self.wfile.flush()

        def _reply(self, query):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            try:
                options = request_options(session, query)
                with lock:
                    for piece in session.reply(query.get("message", [""])[0], options):
                        self._event({"text": piece})
                self._event({}, "done")
            except PicolmError as exc:
                self._event({"error": str(exc)}, "failed")
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


def make_server(session: ChatSession, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    try:
        server = ThreadingHTTPServer((host, port), make_handler(session))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PicolmError(f"port {port} is in use; choose another with --port", field="--port") from None
        raise PicolmError(f"cannot listen on {host}:{port} ({exc.strerror})", field="--port") from None
    server.daemon_threads = True
    return server
