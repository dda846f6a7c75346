"""`picolm chat` and `picolm serve`: a conversation with a model in the terminal or on a local web page."""

from __future__ import annotations

import dataclasses

from picolm.cli.common import (
    Formatter,
    Number,
    add_dtype_option,
    add_sampling_options,
    count,
    device,
    output_folder,
    sampling_options,
)


RESET = {"chat": "/reset starts afresh, /help lists the commands.",
         "serve": "Each page opened is a conversation of its own; /reset (or the page's Reset button) starts afresh."}


def register(verbs) -> None:
    for verb, what, run in (("chat", "chat with a model in the terminal", chat),
                            ("serve", "chat with a model on a local web page", serve)):
        p = verbs.add_parser(verb, formatter_class=Formatter, help=what,
                             description=f"{what[0].upper() + what[1:]}, its replies streamed as they are generated. "
                                         "The conversation stays in the prompt: fine-tuned (SFT/DPO) models get "
                                         "each turn in the instruction template, pretrained ones continue the text "
                                         "of the turns so far. When the turns fill the context less the reply's room "
                                         "(--max-new-tokens, at most half of it), the oldest are dropped, whole, and "
                                         f"you are told. {RESET[verb]} Every session is saved as "
                                         "CHATS_DIR/<Month_DD_YYYY_HH_MM_SS>/transcript.txt with its settings and "
                                         f"each reply's seed. Example: picolm {verb} runs/stories --seed 7")
        p.add_argument("target", help="run directory (best, else last checkpoint) or checkpoint file")
        add_sampling_options(p, max_new_tokens=200, changes={"seed": SEED})
        p.add_argument("--template", default="auto", choices=["auto", "instruction", "chat", "none"],
                       help="auto: instruction for SFT/DPO runs, none (plain continuation) otherwise; chat: the "
                            "<|user|> / <|assistant|> turns of conversational (`messages`) training rows")
        p.add_argument("--chats-dir", type=output_folder, default="chats", help="where sessions are saved")
        p.add_argument("--device", default="auto")
        add_dtype_option(p)
        if verb == "serve":
            add_serve_options(p)
        p.set_defaults(run=run)


# A chat's --seed: a fresh seed per reply unless given, and how each reply's seed follows from it.
SEED = {"default": None, "help": (
    "seed S: the reply numbered i in a conversation (0 for the first since it began or since /reset) is sampled "
    "with seed S + i (mod 2**32), so the same conversation with the same seed gets the same replies. Default: a "
    "fresh seed for every reply, from the operating system. Each reply's seed is in the transcript")}


def add_serve_options(p) -> None:
    """--host, --port and every ServeLimits field as an option; help, default and range from the dataclass."""
    from picolm.chat.limits import ServeLimits
    from picolm.config import flag

    group = p.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; a request's Host header must name it or loopback (and with 0.0.0.0 "
                            "or ::, may name this machine or any IP address)")
    group.add_argument("--port", type=count(0, 65535), default=8000, help="port to listen on; 0 picks a free one")
    for f in dataclasses.fields(ServeLimits):
        group.add_argument(flag(f.name), type=Number(f.metadata["range"]), default=f.default,
                           metavar="N" if f.type == "int" else "SECONDS", help=f.metadata["help"])


def serve_limits(args):
    from picolm.chat.limits import ServeLimits

    return ServeLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeLimits)})


def session(args):
    from picolm.chat.session import ChatSession
    from picolm.loading import load_model

    options = sampling_options(args)
    where = device(args.device)
    return ChatSession(load_model(args.target, device=where, dtype=args.dtype), options, where, args.template, args.chats_dir)


def chat(args) -> int:
    from picolm.chat.terminal import chat_loop

    chat_loop(session(args))
    return 0


def serve(args) -> int:
    from picolm.chat.web import make_server

    limits = serve_limits(args)  # refused before the model loads
    limits.check(sampling_options(args))
    chat_session = session(args)
    server = make_server(chat_session, args.host, args.port, limits)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"chatting with {chat_session.loaded.path} on http://{host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if chat_session.turns:
            print(f"transcript: {chat_session.transcript}")
    return 0
