"""Chat: the terminal loop and its transcripts, and the web page with its streamed replies (in headless
Chromium where the machine has it; CI installs it and sets PICOLM_REQUIRE_BROWSER=1)."""

import json
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from picolm.chat.session import ChatSession, fine_tuned
from picolm.chat.terminal import chat_loop
from picolm.chat.web import make_server
from picolm.cli import main
from picolm.errors import PicolmError
from picolm.config import SamplingOptions
from picolm.loading import load_model

OPTIONS = SamplingOptions(max_new_tokens=12, temperature=0.0)
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


def test_terminal_chat_streams_replies_and_saves_the_transcript(session, tmp_path):
    messages = iter(["3 4 5", "", "10 20 30", "quit", "never read"])
    shown = []
    chat_loop(session, read=lambda prompt: next(messages), write=shown.append)
    text = "".join(shown)
    first, second = expected_reply(session, "3 4 5"), expected_reply(session, "10 20 30")
    assert first.strip() and second.strip() and first != second
    assert f"model> {first}\n" in text and f"model> {second}\n" in text
    folders = list((tmp_path / "chats").iterdir())
    assert len(folders) == 1 and re.fullmatch(r"[A-Z][a-z]+_\d\d_\d{4}_\d\d_\d\d_\d\d", folders[0].name)
    transcript = (folders[0] / "transcript.txt").read_text()
    settings = json.loads(transcript.splitlines()[0].removeprefix("# settings: "))
    assert settings["template"] == "none" and settings["max_new_tokens"] == 12 and settings["temperature"] == 0.0
    assert f"you> 3 4 5\nmodel> {first.strip()}" in transcript and "you> 10 20 30" in transcript
    assert "never read" not in transcript and f"transcript: {folders[0] / 'transcript.txt'}" in text


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
    messages = iter(["3 4 5", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(messages))
    assert main(["chat", str(trained_run), "--chats-dir", str(tmp_path / "chats"), "--temperature", "0",
                 "--max-new-tokens", "5"]) == 0
    assert "model> " in capsys.readouterr().out
    assert len(list((tmp_path / "chats").glob("*/transcript.txt"))) == 1


@pytest.fixture
def server(session):
    server = make_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
    assert 'value="12"' in page


def test_replies_stream_as_server_sent_events(server, session):
    stream = events(server + "/reply?message=3+4+5&max_new_tokens=8&temperature=0")
    assert stream[-1] == ("done", {})
    pieces = [data["text"] for name, data in stream if name == "message"]
    assert len(pieces) > 1
    assert "".join(pieces) == expected_reply(session, "3 4 5", SamplingOptions(max_new_tokens=8, temperature=0.0))
    assert session.transcript.exists()


def test_bad_settings_come_back_as_an_error_event(server):
    stream = events(server + "/reply?message=3&max_new_tokens=0")
    assert stream == [("failed", {"error": "--max-new-tokens: must be at least 1 (got 0)"})]
    assert events(server + "/reply?message=3&temperature=warm")[0][0] == "failed"


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
        reply = WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".model[data-done='true']"))
        assert driver.find_element(By.CSS_SELECTOR, ".you").text == "you: 3 4 5"
        expected = expected_reply(session, "3 4 5", SamplingOptions(max_new_tokens=8, temperature=0.0))
        assert reply.text.strip() == expected.strip() and expected.strip()
    finally:
        driver.quit()
    assert "you> 3 4 5" in session.transcript.read_text()
