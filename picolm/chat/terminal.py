"""`picolm chat`: read a message, stream the reply, until `exit`, `quit` or end of input; `/reset` starts the
conversation afresh, `/help` lists the commands."""

from __future__ import annotations

import re
from collections.abc import Callable

from picolm.chat.session import CLEARED, ChatSession
from picolm.errors import PicolmError

EXIT_WORDS = ("exit", "quit", "/exit", "/quit")
HELP = ("commands: /reset clears the conversation (the model forgets the earlier turns); /help lists the commands; "
        "exit, quit, /exit or /quit (or end of input) leaves\n")


def chat_loop(session: ChatSession, read: Callable[[str], str] | None = None,
              write: Callable[[str], None] | None = None) -> None:
    read = read or input
    write = write or (lambda text: print(text, end="", flush=True))
    write(f"chatting with {session.loaded.path} ({session.template} template); the conversation stays in the "
          "prompt; /help lists the commands\n")
    while True:
        try:
            message = read("you> ").strip()
        except EOFError:
            break
        if message.lower() in EXIT_WORDS:
            break
        if not message:
            continue
        if message == "/help":
            write(HELP)
        elif message == "/reset":
            session.reset()
            write(CLEARED + "\n")
        elif re.fullmatch(r"/\w+", message):
            write(f"(unknown command {message}; /help lists the commands)\n")
        else:
            answer(session, message, write)
    if session.turns:
        write(f"transcript: {session.transcript}\n")


def answer(session: ChatSession, message: str, write: Callable[[str], None]) -> None:
    """The reply to one message, after the notice of any turns it drops; a message the model cannot read is said."""
    try:
        request = session.request(message)
    except PicolmError as exc:
        write(f"({exc})\n")
        return
    if notice := session.notice(request):
        write(notice + "\n")
    write("model> ")
    for piece in session.answer(request):
        write(piece)
    write("\n")
