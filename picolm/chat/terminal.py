"""`picolm chat`: read a message, stream the reply, until `exit`, `quit` or end of input."""

from __future__ import annotations

from collections.abc import Callable

from picolm.chat.session import ChatSession

EXIT_WORDS = ("exit", "quit")


def chat_loop(session: ChatSession, read: Callable[[str], str] | None = None,
              write: Callable[[str], None] | None = None) -> None:
    read = read or input
    write = write or (lambda text: print(text, end="", flush=True))
    write(f"chatting with {session.loaded.path} ({session.template} template); type exit or quit to leave\n")
    while True:
        try:
            message = read("you> ").strip()
        except EOFError:
            break
        if message.lower() in EXIT_WORDS:
            break
        if not message:
            continue
        write("model> ")
        for piece in session.reply(message):
            write(piece)
        write("\n")
    if session.turns:
        write(f"transcript: {session.transcript}\n")
