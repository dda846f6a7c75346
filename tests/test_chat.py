"""Chat: the terminal loop, its conversation (earlier turns in the prompt, the oldest dropped to fit, /reset), the
replies' seeds and the transcripts, and the web page with its streamed replies and per-page conversations (in
headless Chromium where the machine has it; CI installs it and sets PICOLM_REQUIRE_BROWSER=1)."""

import html
import http.client
import itertools
import json
import os
import re
import shutil
import socket
import string
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from picolm.chat import web
from picolm.chat.limits import ServeLimits
from picolm.chat.scheduler import Scheduler
from picolm.chat.session import CLEARED, ChatSession, Conversation, Turn, fine_tuned
from picolm.chat.terminal import HELP, chat_loop
from picolm.chat.web import host_allowed, make_server
from picolm.cli import main
from picolm.config import ModelConfig, SamplingOptions
from picolm.data.examples import encode_sft
from picolm.data.records import render_instruction
from picolm.errors import PicolmError
from picolm.loading import LoadedModel, load_model
from picolm.models.gpt import GPT
from picolm.tokenizer import char_tokenizer

OPTIONS = SamplingOptions(max_new_tokens=12, temperature=0.0)
DONE = ("done", {"seed": 0})  # a message answered on its own: its reply's seed is the session's (0) + 0
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def session(trained_run, tmp_path):
    """The tiny numeric run with its weights stirred: it talks on instead of ending at once with EOS."""
    loaded = load_model(trained_run)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return ChatSession(loaded, OPTIONS, chats_dir=tmp_path / "chats")


def expected_reply(session, message: str, options=OPTIONS) -> str:
    return session.generator.complete([session.prompt_for(message)], options)[0]


def ids(session, *texts: str) -> list[int]:
    """The token ids of these texts, one after another."""
    return [i for text in texts for i in session.loaded.tokenizer.encode(text)]


def talk(session, *messages: str) -> str:
    """What the terminal shows for these messages, typed one after another."""
    typed, shown = iter(messages), []
    chat_loop(session, read=lambda prompt: next(typed), write=shown.append)
    return "".join(shown)


def prompts_given(session, monkeypatch) -> list[list[int]]:
    """The prompt ids the session's sampler is given, reply after reply."""
    prompts, real = [], session.generator.sampler.steps

    def steps(model, batch, *args, **kwargs):
        prompts.append(list(batch[0]))
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(session.generator.sampler, "steps", steps)
    return prompts


def seeds(transcript: Path) -> list[int]:
    return [int(seed) for seed in re.findall(r"^# (?:conversation \d+, )?seed (\d+)$", transcript.read_text(), re.M)]


def test_terminal_chat_streams_replies_and_saves_the_transcript(session, tmp_path):
    text = talk(session, "3 4 5", "", "10 20 30", "quit", "never read")
    first = expected_reply(session, "3 4 5")
    second = session.generator.complete([ids(session, "3 4 5", first, "10 20 30")], OPTIONS)[0]  # the first turn too
    assert first.strip() and second.strip() and first != second
    assert f"model> {first}\n" in text and f"model> {second}\n" in text
    folders = list((tmp_path / "chats").iterdir())
    assert len(folders) == 1 and re.fullmatch(r"[A-Z][a-z]+_\d\d_\d{4}_\d\d_\d\d_\d\d", folders[0].name)
    transcript = (folders[0] / "transcript.txt").read_text()
    settings = json.loads(transcript.splitlines()[0].removeprefix("# settings: "))
    assert settings["template"] == "none" and settings["max_new_tokens"] == 12 and settings["temperature"] == 0.0
    assert f"# seed 0\nyou> 3 4 5\nmodel> {first.strip()}\n" in transcript
    assert f"# seed 1\nyou> 10 20 30\nmodel> {second.strip()}\n" in transcript
    assert "never read" not in transcript and f"transcript: {folders[0] / 'transcript.txt'}" in text


def test_the_prompt_of_a_turn_holds_the_turns_before_it(session, tmp_path, monkeypatch):
    session = ChatSession(session.loaded, replace(OPTIONS, max_new_tokens=4), chats_dir=tmp_path)
    prompts = prompts_given(session, monkeypatch)
    text = talk(session, "3 4", "5 6", "7 8", "exit")
    replies = [turn.reply for turn in session.conversation.turns]
    assert len(replies) == 3 and all(r.strip() for r in replies) and "dropped" not in text
    assert all(f"model> {r}\n" in text for r in replies)
    assert prompts == [ids(session, "3 4"), ids(session, "3 4", replies[0], "5 6"),
                       ids(session, "3 4", replies[0], "5 6", replies[1], "7 8")]


def test_instruction_turns_are_the_training_examples_they_were(tmp_path):
    """A fine-tuned model's earlier turns are in the prompt as SFT encoded its training examples: the instruction
    template, the response, EOS."""
    tokenizer = char_tokenizer([string.ascii_letters + string.punctuation + " \n"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=256, vocab_size=tokenizer.vocab_size)).eval()
    chat = ChatSession(LoadedModel(model, tokenizer, {"task": "sft"}, tmp_path / "char"),
                       SamplingOptions(max_new_tokens=8), chats_dir=tmp_path)
    assert chat.template == "instruction"
    turns = [Turn("Hi.", "Hello!", 5), Turn("Your name?", "Pico.", 6)]
    request = chat.request("Why?", Conversation(turns=list(turns)))
    examples = encode_sft([{"prompt": render_instruction(t.message), "response": t.reply} for t in turns], tokenizer,
                          block_size=256)
    trained = [int(i) for p, r in zip(examples.prompts, examples.responses) for i in [*p, *r]]
    assert request.prompt == trained + tokenizer.encode(render_instruction("Why?")) and not request.dropped
    assert tokenizer.decode(request.prompt) == ("### Instruction:\nHi.\n\n### Response:\nHello!<|endoftext|>"
                                                "### Instruction:\nYour name?\n\n### Response:\nPico.<|endoftext|>"
                                                "### Instruction:\nWhy?\n\n### Response:\n")


def test_chat_template_turns_are_the_conversational_rows_they_were_trained_as(tmp_path):
    """--template chat: the prompt of the third message is the prompt `picolm prepare` makes of a `messages` row for
    its third assistant turn (picolm.data.sources.chat_rows), token for token."""
    from picolm.data.sources import chat_rows

    tokenizer = char_tokenizer([string.ascii_letters + string.punctuation + " \n"])
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=256, vocab_size=tokenizer.vocab_size)).eval()
    chat = ChatSession(LoadedModel(model, tokenizer, {"task": "sft"}, tmp_path / "char"),
                       SamplingOptions(max_new_tokens=8), template="chat", chats_dir=tmp_path)
    turns = [Turn("Hi.", "Hello!", 5), Turn("Your name?", "Pico.", 6)]
    request = chat.request("Why?", Conversation(turns=list(turns)))
    messages = [{"role": role, "content": text} for turn in turns
                for role, text in (("user", turn.message), ("assistant", turn.reply))]
    trained = chat_rows(messages + [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "So."}])
    assert request.prompt == tokenizer.encode(trained[-1]["prompt"])
    assert tokenizer.decode(request.prompt).endswith("<|user|>\nWhy?\n<|assistant|>\n")


def test_a_long_conversation_drops_its_oldest_turns_and_says_so(session, tmp_path, monkeypatch):
    new_tokens, block_size = 6, session.loaded.model.config.block_size
    session = ChatSession(session.loaded, replace(OPTIONS, max_new_tokens=new_tokens), chats_dir=tmp_path)
    prompts = prompts_given(session, monkeypatch)
    messages = ["1 2 3", "4 5 6", "7 8 9", "10 11 12 13 14 15 16 17 18 19", "20 21", "22 23", "24 25", "26 27"]
    text = talk(session, *messages, "exit")
    replies = re.findall(r"^model> (.*)$", text, re.M)
    assert len(replies) == len(messages) and len(prompts) == len(messages)
    first, notices = 0, []  # the oldest turn still in the conversation, and the drops the user should be told of
    for n, (message, prompt) in enumerate(zip(messages, prompts)):
        turns = [ids(session, m, r) for m, r in zip(messages[:n], replies[:n])]
        start = next(j for j in range(first, n + 1) if sum(map(len, turns[j:])) + len(ids(session, message)) <=
                     block_size - new_tokens)
        if start > first:
            notices.append(start - first)
        first = start
        assert prompt == [i for turn in turns[start:] for i in turn] + ids(session, message)
        assert len(prompt) + new_tokens <= block_size
    assert len(notices) >= 2 and max(notices) >= 2  # both "the oldest turn" and "the N oldest turns" were said
    said = re.findall(r"^\(dropped the (\d+ )?oldest turns? to fit the 32-token context\)\nmodel> ", text, re.M)
    assert [int(n or 1) for n in said] == notices
    assert text.count("(dropped") == len(notices)
    transcript = session.transcript.read_text()
    assert transcript.count("# dropped the") == len(notices) and seeds(session.transcript) == list(range(len(messages)))


def test_a_message_longer_than_the_context_keeps_its_end(session, tmp_path):
    warned = []
    chat = ChatSession(session.loaded, replace(OPTIONS, max_new_tokens=100), chats_dir=tmp_path, warn=warned.append)
    message = " ".join(str(i) for i in range(20))
    request = chat.request(message, Conversation(turns=[Turn("3 4 5", "6 7", 0)]))
    assert request.prompt == ids(chat, message)[-16:] and len(request.dropped) == 1  # 32 less the reply's room: half
    assert warned == ["the message has 20 tokens, more than the 16 the context leaves beside the reply; keeping its "
                      "last 16"]


def test_reset_clears_the_conversation_and_help_lists_it(session, tmp_path, monkeypatch):
    session = ChatSession(session.loaded, replace(OPTIONS, temperature=1.0, seed=7), chats_dir=tmp_path)
    prompts = prompts_given(session, monkeypatch)
    text = talk(session, "/help", "3 4 5", "10 20", "/reset", "3 4 5", "/nope", "hello", "/quit")
    assert HELP in text and "/reset" in HELP and "(unknown command /nope; /help lists the commands)" in text
    assert "('hello' is not in the numeric vocabulary)\n" in text  # said, and the chat goes on
    assert f"\n{CLEARED}\n" in text and len(prompts) == 3 and prompts[2] == prompts[0] == ids(session, "3 4 5")
    replies = re.findall(r"^model> (.*)$", text, re.M)
    assert replies[0] == replies[2] and replies[0].strip()  # the same seed again (7 + 0) on the same prompt
    assert seeds(session.transcript) == [7, 8, 7]
    assert "# conversation cleared (/reset)" in session.transcript.read_text()
    assert session.conversation.turns == [Turn("3 4 5", replies[2], 7)]


def test_replies_get_fresh_seeds_recorded_in_the_transcript(session, tmp_path):
    options, recorded = replace(OPTIONS, temperature=1.0, seed=None), []
    for name in ("one", "two"):
        chat = ChatSession(session.loaded, options, chats_dir=tmp_path / name)
        talk(chat, "3 4 5", "10 20", "exit")
        assert json.loads(chat.transcript.read_text().splitlines()[0].removeprefix("# settings: "))["seed"] is None
        recorded += seeds(chat.transcript)
        first, second = chat.conversation.turns  # each reply is what its recorded seed samples
        assert first.reply == chat.generator.complete([ids(chat, "3 4 5")], replace(options, seed=first.seed))[0]
        assert second.reply == chat.generator.complete([ids(chat, "3 4 5", first.reply, "10 20")],
                                                       replace(options, seed=second.seed))[0]
    assert len(recorded) == 4 and len(set(recorded)) == 4


def test_a_seed_repeats_the_replies(session, tmp_path):
    options, shown = replace(OPTIONS, temperature=1.0, seed=2**32 - 2), []
    for name in ("one", "two", "three"):
        chat = ChatSession(session.loaded, options if name != "three" else replace(options, seed=5),
                           chats_dir=tmp_path / name)
        shown.append(talk(chat, "3 4 5", "10 20", "30 40", "exit").replace(str(chat.transcript), ""))
        if name == "one":
            assert seeds(chat.transcript) == [2**32 - 2, 2**32 - 1, 0]  # S + turn index, mod 2**32
    assert shown[0] == shown[1] and shown[0] != shown[2]


def test_end_of_input_leaves_the_chat(session):
    def read(prompt):
        raise EOFError

    chat_loop(session, read=read, write=lambda text: None)
    assert session.turns == 0 and not session.transcript.exists()


def test_fine_tuned_runs_get_the_instruction_template(session):
    assert not fine_tuned(session.loaded.checkpoint)
    assert fine_tuned({"train_config": {"objective": {"kind": "sft"}}})
    assert fine_tuned({"train_config": {"objective": {"kind": "dpo"}}})
    assert session.prompt_for("hi") == "hi"
    session.template = "instruction"
    assert session.prompt_for("Tell a story.") == "### Instruction:\nTell a story.\n\n### Response:\n"


def test_the_chat_command_runs_in_the_terminal(trained_run, tmp_path, monkeypatch, capsys):
    said = {}
    for name, seed in (("one", ["--seed", "9"]), ("two", ["--seed", "9"]), ("fresh", [])):
        messages = iter(["3 4 5", "6 7", "exit"])
        monkeypatch.setattr("builtins.input", lambda prompt="": next(messages))
        assert main(["chat", str(trained_run), "--chats-dir", str(tmp_path / name), "--temperature", "1",
                     "--max-new-tokens", "5", *seed]) == 0
        said[name] = capsys.readouterr().out.split("transcript: ")[0]
        transcript, = (tmp_path / name).glob("*/transcript.txt")
        assert said[name].count("model> ") == 2 and (seeds(transcript) == [9, 10]) == bool(seed)
    assert said["one"] == said["two"]


@pytest.fixture
def start():
    """start(session, **limits): a real server on a free loopback port, shut down after the test."""
    servers = []

    def start(session, **limits):
        server = make_server(session, port=0, limits=ServeLimits(**limits))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def address(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def server(session, start):
    return address(start(session))


@pytest.fixture
def endless(session):
    """The stirred session with no EOS in its vocabulary: every reply runs to its max_new_tokens."""
    session.loaded.tokenizer.eos_id = None
    return session


def get(server, path: str, host: str | None = None) -> tuple[int, dict, str]:
    """(status, headers, body) of a GET sent with this Host header (none at all when host is "")."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        connection.putrequest("GET", path, skip_host=True)
        if host != "":
            connection.putheader("Host", host or f"127.0.0.1:{server.server_address[1]}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def stalled_client(server, query: str) -> socket.socket:
    """A client that asks for a reply and never reads it, its receive buffer as small as the kernel allows."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    client.connect(("127.0.0.1", server.server_address[1]))
    client.sendall(f"GET /reply?{query} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return client


def stalled(server) -> bool:
    """Whether the one reply in progress has stopped getting turns: its client has not taken its last events."""
    replies = list(server.scheduler.replies)
    return len(replies) == 1 and replies[0].outbox.full() and not replies[0].gone


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {condition.__name__}"
        time.sleep(0.02)


def events(url: str) -> list[tuple[str, dict]]:
    """(event name, data) of a server-sent event stream, read to its end."""
    found, name = [], "message"
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        for line in response.read().decode().splitlines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                found.append((name, json.loads(line.removeprefix("data: "))))
                name = "message"
    return found


def test_the_page_shows_the_generation_settings(server):
    page = urllib.request.urlopen(server + "/", timeout=30).read().decode()
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty"):
        assert f'id="{name}"' in page
    assert 'value="12"' in page and 'max="1000"' in page


def test_the_page_escapes_every_value_it_shows(trained_run, tmp_path, start):
    run = tmp_path / "run \"'<script>alert(1)</script>"
    shutil.copytree(trained_run, run)
    server = start(ChatSession(load_model(run), OPTIONS, chats_dir=tmp_path / "chats"))
    status, headers, page = get(server, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<script>alert" not in page and "run \"'" not in page
    assert html.escape(str(run)) in page and "run &quot;&#x27;&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_host_header_must_name_this_server(session, start):
    server = start(session)
    port = server.server_address[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LocalHost", "localhost."):
        assert get(server, "/", host)[0] == 200, host
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "[::2]", "", "[::1"):
        status, _, body = get(server, "/", host)
        assert status == 403 and "is not this server" in body, host
    status, _, body = get(server, "/reply?message=3+4+5", f"evil.example:{port}")  # a rebound page asks for a reply
    assert status == 403 and "event:" not in body
    assert session.turns == 0 and not server.scheduler.replies


def test_other_hosts_are_allowed_as_the_host_option_says():
    assert host_allowed("picolm.lan:8000", "picolm.lan") and not host_allowed("evil.example", "picolm.lan")
    assert host_allowed("192.168.1.5:8000", "0.0.0.0") and host_allowed("[fe80::1]:8000", "::")
    assert host_allowed(socket.gethostname(), "0.0.0.0") and not host_allowed("evil.example:8000", "0.0.0.0")
    assert not host_allowed("192.168.1.5:8000", "127.0.0.1") and not host_allowed(None, "127.0.0.1")


def test_replies_stream_as_server_sent_events(server, session):
    stream = events(server + "/reply?message=3+4+5&max_new_tokens=8&temperature=0")
    assert stream[-1] == DONE
    pieces = [data["text"] for name, data in stream if name == "message"]
    assert len(pieces) > 1
    assert "".join(pieces) == expected_reply(session, "3 4 5", SamplingOptions(max_new_tokens=8, temperature=0.0))
    assert session.transcript.exists()


def open_page(server: str) -> str:
    """The conversation id of a newly opened page."""
    page = urllib.request.urlopen(server + "/", timeout=30).read().decode()
    return re.search(r'<body data-conversation="([A-Za-z0-9_-]+)">', page)[1]


def ask(server: str, conversation: str, message: str, max_new_tokens: int = 4) -> list[tuple[str, dict]]:
    query = urllib.parse.urlencode({"conversation": conversation, "message": message, "temperature": 0,
                                    "max_new_tokens": max_new_tokens})
    return events(f"{server}/reply?{query}")


def said(stream) -> str:
    return "".join(data["text"] for name, data in stream if name == "message")


def test_each_web_page_keeps_its_own_conversation(server, session):
    options = replace(OPTIONS, max_new_tokens=4)
    page, other = open_page(server), open_page(server)
    assert page != other and len(page) >= 20
    first = ask(server, page, "3 4 5")
    assert first[-1] == ("done", {"seed": 0}) and said(first) == expected_reply(session, "3 4 5", options)
    second = ask(server, page, "10 20")
    assert second[-1] == ("done", {"seed": 1})  # the conversation's second reply: seed 0 + 1
    assert said(second) == session.generator.complete([ids(session, "3 4 5", said(first), "10 20")], options)[0]
    assert said(second) != expected_reply(session, "10 20", options)
    alone = ask(server, other, "10 20")  # another page: none of the first page's turns
    assert alone[-1] == ("done", {"seed": 0}) and said(alone) == expected_reply(session, "10 20", options)
    assert ask(server, page, "/reset") == [("notice", {"text": CLEARED}), ("done", {})]
    again = ask(server, page, "10 20")
    assert again == alone
    transcript = session.transcript.read_text()
    assert "# conversation 1, seed 1\nyou> 10 20\n" in transcript and "# conversation 1 cleared (/reset)" in transcript
    assert seeds(session.transcript) == [0, 1, 0, 0]


def test_a_web_conversation_drops_its_oldest_turns_with_a_notice(server, session):
    page, message = open_page(server), "1 2 3 4 5 6 7 8 9 10"  # with the 12 new tokens, a turn and a message fill it
    first = ask(server, page, message, max_new_tokens=12)
    assert first[0][0] == "message" and said(first).strip()
    second = ask(server, page, message, max_new_tokens=12)
    assert second[0] == ("notice", {"text": "(dropped the oldest turn to fit the 32-token context)"})
    assert said(second) == said(first) == expected_reply(session, message)  # answered as alone, as the first was


def test_the_server_keeps_the_conversations_used_last(session, start):
    server = start(session, conversations=2)
    url = address(server)
    first, second = open_page(url), open_page(url)
    assert ask(url, first, "3")[-1][0] == "done"  # used: now the second is the oldest
    third = open_page(url)
    assert ask(url, second, "3") == [("failed", {"error": "conversation: this conversation is no longer on the server "
                                                          "(it keeps the 2 used last, --conversations): reload the "
                                                          "page to start a new one"})]
    assert ask(url, first, "3")[-1][0] == ask(url, third, "3")[-1][0] == "done"
    assert ask(url, "made-up", "3")[0][0] == "failed"


def test_bad_settings_come_back_as_an_error_event(server):
    stream = events(server + "/reply?message=3&max_new_tokens=0")
    assert stream == [("failed", {"error": "--max-new-tokens: must be at least 1 (got 0)"})]
    assert events(server + "/reply?message=3&temperature=warm")[0][0] == "failed"


def test_a_request_for_more_than_the_cap_is_refused(session, start):
    server = start(session, max_new_tokens_cap=20)
    assert events(address(server) + "/reply?message=3&max_new_tokens=1000000") == [
        ("failed", {"error": "--max-new-tokens: at most 20 on this server (--max-new-tokens-cap; got 1000000)"})]
    assert events(address(server) + "/reply?message=3&max_new_tokens=20")[-1] == DONE
    with pytest.raises(PicolmError, match=r"--max-new-tokens: at most 5 on this server"):
        make_server(session, port=0, limits=ServeLimits(max_new_tokens_cap=5))  # the page's own default (12)


def numbered(name: str, count: int | None, log: list[str]):
    """A reply of `count` pieces (None: endless), each turn it takes logged; "closed" once it is stopped early."""
    try:
        for i in range(count) if count is not None else itertools.count():
            log.append(name)
            yield f"{name}{i}"
    except GeneratorExit:
        log.append(f"{name} closed")
        raise


def test_the_scheduler_gives_each_reply_a_turn_in_round_robin():
    log, scheduler = [], Scheduler(limit=3)
    try:
        with scheduler.changed:  # all three are in before the first turn
            replies = [scheduler.submit(numbered(name, 3, log)) for name in "abc"]
            assert scheduler.submit(numbered("d", 3, log)) is None  # over the limit
        texts = [[data.get("text") for _, data in reply.events()] for reply in replies]
    finally:
        scheduler.close()
    assert log == list("cbacbacba")  # the newest first, then in turn
    assert texts == [["a0", "a1", "a2", None], ["b0", "b1", "b2", None], ["c0", "c1", "c2", None]]


def test_a_reply_whose_client_does_not_take_its_pieces_gets_no_turns():
    log, scheduler = [], Scheduler(limit=2, backlog=2)
    try:
        stalled = scheduler.submit(numbered("stalled", None, log))
        wait_for(lambda: stalled.outbox.full())
        events = list(scheduler.submit(numbered("read", 5, log)).events())
        assert [name for name, _ in events] == ["message"] * 5 + ["done"]
        assert log.count("stalled") == 2  # as many as its outbox holds, however long the other took
        stalled.leave()
        wait_for(lambda: "stalled closed" in log)
    finally:
        scheduler.close()
    assert not scheduler.replies


def test_replies_take_turns_on_the_model(endless, start):
    server = start(endless, max_new_tokens_cap=5000)
    finished = {}

    def long_reply():
        events(address(server) + "/reply?message=3+4+5&max_new_tokens=1000&temperature=1")
        finished["long"] = time.monotonic()

    reader = threading.Thread(target=long_reply)
    reader.start()
    wait_for(lambda: server.scheduler.replies)
    stream = events(address(server) + "/reply?message=10+20&max_new_tokens=8&temperature=0")
    finished["short"] = time.monotonic()
    reader.join()
    assert stream[-1] == DONE and len(stream) == 9
    assert finished["short"] < finished["long"]  # first in, first out would have made it wait for all 1000


def test_a_client_that_stops_reading_is_dropped_and_blocks_no_one(endless, start):
    server = start(endless, max_new_tokens_cap=100_000, client_timeout=1)
    client = stalled_client(server, "message=3+4+5&max_new_tokens=100000&temperature=1")
    try:
        wait_for(lambda: stalled(server))
        stream = events(address(server) + "/reply?message=10+20&max_new_tokens=8&temperature=0")
        assert stream[-1] == DONE and len(stream) == 9
        assert len(server.scheduler.replies) == 1  # still there: served alongside, not after it
        wait_for(lambda: not server.scheduler.replies, seconds=10)  # dropped after --client-timeout
        client.settimeout(30)
        received = b""
        while piece := client.recv(65536):
            received += piece
    finally:
        client.close()
    assert received.startswith(b"HTTP/1.0 200 OK") and b"data: " in received
    assert b"event: done" not in received and received.count(b"data: ") < 10_000  # not written beyond its buffers


def test_a_full_queue_is_refused_with_503(endless, start):
    server = start(endless, max_new_tokens_cap=100_000, queue=1, connections=3, client_timeout=2)
    client = stalled_client(server, "message=3&max_new_tokens=100000")
    try:
        wait_for(lambda: server.scheduler.replies)
        status, headers, body = get(server, "/reply?message=3+4+5")
        assert status == 503 and headers["Retry-After"] == "1"
        assert body == "busy: the reply queue (--queue 1) is full; try again shortly"
        assert get(server, "/")[0] == 200  # the page is still served: --connections exceeds --queue
    finally:
        client.close()
    wait_for(lambda: not server.scheduler.replies)
    assert events(address(server) + "/reply?message=3+4+5")[-1] == DONE


def test_idle_connections_are_dropped_and_bounded(session, start):
    server = start(session, queue=1, connections=2, client_timeout=1)
    idle = [socket.create_connection(("127.0.0.1", server.server_address[1])) for _ in range(2)]
    began = time.monotonic()
    try:
        status, _, page = get(server, "/")  # waits to be accepted until an idle client is dropped
        waited = time.monotonic() - began
        for client in idle:
            client.settimeout(30)
            assert client.recv(1024) == b""  # closed by the server, never answered
    finally:
        for client in idle:
            client.close()
    assert status == 200 and "picolm chat" in page and waited > 0.5


def test_a_request_sent_a_byte_at_a_time_is_dropped_after_the_timeout(session, start):
    server = start(session, client_timeout=1)
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.server_address[1])) as client:
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"x" * 100:
                client.sendall(bytes([byte]))
                time.sleep(0.05)
            pytest.fail("the server kept reading")
        except (BrokenPipeError, ConnectionResetError):
            pass
        client.settimeout(30)
        try:
            assert client.recv(1024) == b""
        except ConnectionResetError:
            pass
    assert 0.9 < time.monotonic() - began < 5


def test_a_sampling_failure_ends_the_stream_with_a_failed_event(server, session, monkeypatch, capfd):
    real, first = session.generator.sampler.steps, expected_reply(session, "3 4 5", replace(OPTIONS, max_new_tokens=4))

    def breaking_after(n):
        def steps(*args, **kwargs):
            tokens = real(*args, **kwargs)
            for _ in range(n):
                yield next(tokens)
            raise RuntimeError("the sampler broke")
        return steps

    failed = ("failed", {"error": "the reply failed (RuntimeError: the sampler broke)"})
    monkeypatch.setattr(session.generator.sampler, "steps", breaking_after(0))
    assert events(server + "/reply?message=3+4+5&temperature=0") == [failed]
    monkeypatch.setattr(session.generator.sampler, "steps", breaking_after(4))
    stream = events(server + "/reply?message=3+4+5&temperature=0")
    assert stream[-1] == failed and [name for name, _ in stream[:-1]] == ["message"] * (len(stream) - 1)
    assert "".join(data["text"] for _, data in stream[:-1]) == first
    assert "RuntimeError: the sampler broke" in capfd.readouterr().err  # the traceback, for whoever runs it
    monkeypatch.undo()
    assert events(server + "/reply?message=3+4+5&temperature=0")[-1] == DONE  # the server goes on
    assert session.turns == 1


@pytest.mark.parametrize("option, message", [
    (["--max-new-tokens-cap", "0"], "argument --max-new-tokens-cap: must be at least 1, got 0"),
    (["--queue", "-2"], "argument --queue: must be at least 1, got -2"),
    (["--queue", "nan"], "argument --queue: expected a whole number, got 'nan'"),
    (["--client-timeout", "nan"], "argument --client-timeout: must be in (0, 86400], got nan"),
    (["--client-timeout", "inf"], "argument --client-timeout: must be in (0, 86400], got inf"),
    (["--client-timeout", "0"], "argument --client-timeout: must be in (0, 86400], got 0"),
    (["--connections", "16"], "--connections: must exceed --queue (16) (got 16)"),
    (["--conversations", "0"], "argument --conversations: must be at least 1, got 0"),
    (["--max-new-tokens-cap", "100"], "--max-new-tokens: at most 100 on this server (--max-new-tokens-cap; got 200)"),
    (["--port", "70000"], "argument --port: must be at most 65535, got 70000"),
])
def test_bad_server_options_are_refused_before_the_model_loads(option, message, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "no-such-run"), *option]) == 2
    assert capsys.readouterr().err == f"picolm serve: error: {message}\n"


def test_limits_made_in_code_are_checked_as_on_the_command_line():
    for limits, message in (({"queue": 0}, "--queue: must be at least 1 (got 0)"),
                            ({"client_timeout": float("nan")}, "--client-timeout: must be in (0, 86400] (got nan)"),
                            ({"queue": 40}, "--connections: must exceed --queue (40) (got 32)")):
        with pytest.raises(PicolmError) as refused:
            ServeLimits(**limits)
        assert str(refused.value) == message


def test_the_serve_command_passes_its_limits_to_the_server(trained_run, tmp_path, monkeypatch, capsys):
    seen = {}

    def serve_forever(self, poll_interval=0.5):
        seen["limits"] = self.limits
        raise KeyboardInterrupt

    monkeypatch.setattr(web.Server, "serve_forever", serve_forever)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert main(["serve", str(trained_run), "--port", str(port), "--chats-dir", str(tmp_path), "--max-new-tokens", "10",
                 "--max-new-tokens-cap", "50", "--queue", "3", "--connections", "5", "--client-timeout", "2.5"]) == 130
    assert seen["limits"] == ServeLimits(max_new_tokens_cap=50, queue=3, client_timeout=2.5, connections=5)
    assert f"on http://127.0.0.1:{port}/" in capsys.readouterr().out


def test_a_port_in_use_is_a_clear_error(session):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PicolmError, match=r"port \d+ is in use; choose another with --port"):
            make_server(session, port=taken.getsockname()[1])


def _browser_ready() -> bool:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        try:
            import selenium  # noqa: F401
            return True
        except ImportError:
            pass
    if os.environ.get("PICOLM_REQUIRE_BROWSER"):
        pytest.fail("PICOLM_REQUIRE_BROWSER is set but chromium, chromedriver or selenium is missing")
    return False


@pytest.mark.slow
def test_a_prompt_typed_in_chromium_gets_a_streamed_reply(server, session, tmp_path):
    if not _browser_ready():
        pytest.skip("needs Debian's chromium and chromium-driver and selenium (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "max_new_tokens").clear()
        driver.find_element(By.ID, "max_new_tokens").send_keys("8")
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("0")
        driver.find_element(By.ID, "message").send_keys("3 4 5")
        driver.find_element(By.ID, "send").click()
        done = ".model[data-done='true']"
        reply = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, done))
        assert driver.find_element(By.CSS_SELECTOR, ".you").text == "you: 3 4 5"
        options = SamplingOptions(max_new_tokens=8, temperature=0.0)
        expected = expected_reply(session, "3 4 5", options)
        assert reply.text.strip() == expected.strip() and expected.strip()
        driver.find_element(By.ID, "message").send_keys("10 20")  # the second turn: the first is in its prompt
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, done)) == 2)
        second = session.generator.complete([ids(session, "3 4 5", expected, "10 20")], options)[0]
        assert driver.find_elements(By.CSS_SELECTOR, ".model")[1].text.strip() == second.strip()
        assert [seed.text for seed in driver.find_elements(By.CSS_SELECTOR, ".seed")] == ["seed 0", "seed 1"]
        driver.find_element(By.ID, "reset").click()
        notice = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, ".notice"))
        assert notice.text == CLEARED
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "send").is_enabled())
        driver.find_element(By.ID, "message").send_keys("10 20")
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, done)) == 3)
        alone = expected_reply(session, "10 20", options)
        assert driver.find_elements(By.CSS_SELECTOR, ".model")[2].text.strip() == alone.strip() != second.strip()
    finally:
        driver.quit()
    assert "you> 3 4 5" in session.transcript.read_text() and seeds(session.transcript) == [0, 1, 0]
