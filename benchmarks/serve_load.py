"""`picolm serve` under load, on loopback only: --clients clients (default 20) ask for replies back to back, alone
and then with hostile clients beside them, --seconds of each (default 15: 30 s in all). The hostile clients: one
asks for a million new tokens once a second (over the cap: refused), one asks for the cap (--cap tokens) over and
over and reads it all, one asks for the cap and never reads. For each kind of phase: time to the first token and to
the end of a reply (p50/p90/p99), replies and tokens per second, refusals (HTTP 503 from a full queue). The peer is
the phase without the hostile clients: the ratio of the p50s shows what they cost everyone else. Replies take turns
on the model a token at a time, so a reply that is being read costs the others one turn a round ((C + 1) / C), a
non-reading one nothing once its buffers are full; served first in, first out, every reply would wait behind the
cap-length ones.

The phases alternate, --rounds times (default 5), so the machine's noise hits both alike; the non-reading client of
the last round stays until the server has had time to drop it, then reads what it was sent (a stream cut short,
without `done`). The model is a random GPT (L4 H4 d128, context 256, learned positions, seed 0) whose character
vocabulary has no end-of-text token, so every reply is exactly its --new-tokens tokens. The server runs in a
process of its own, its torch on one thread; the clients are threads of this one. Two seconds of load warm it first.

    python benchmarks/serve_load.py [--clients 20] [--seconds 15] [--rounds 5] [--new-tokens 32] [--cap 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import socket
import statistics
import string
import threading
import time
from pathlib import Path

MILLION = 1_000_000


def serve(port_out, cap: int, queue: int, client_timeout: float) -> None:
    """The server process: build the model, start `picolm serve`'s server on a free loopback port, report the port."""
    import torch

    from picolm.chat.limits import ServeLimits
    from picolm.chat.session import ChatSession
    from picolm.chat.web import make_server
    from picolm.config import ModelConfig, SamplingOptions
    from picolm.loading import LoadedModel
    from picolm.models.gpt import GPT
    from picolm.tokenizer import char_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = char_tokenizer([string.ascii_letters + string.digits + " .,"])
    tokenizer.eos_id = None  # no end of text: every reply runs to its max_new_tokens
    model = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=tokenizer.vocab_size,
                            position="learned")).eval()
    session = ChatSession(LoadedModel(model, tokenizer, {}, Path("random L4 H4 d128")), SamplingOptions(),
                          chats_dir=Path("/tmp/picolm-serve-load-chats"))
    server = make_server(session, port=0, limits=ServeLimits(max_new_tokens_cap=cap, queue=queue,
                                                             client_timeout=client_timeout, connections=queue + 32))
    port_out.put(server.server_address[1])
    server.serve_forever()


def reply(port: int, query: str, until: float | None = None) -> dict:
    """One request read to its end (or to `until`, when the client leaves): status, seconds to the first piece and
    to the end, pieces, the last event."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    try:
        connection.request("GET", "/reply?" + query)
        response = connection.getresponse()
        found = {"status": response.status, "first": None, "pieces": 0, "event": None}
        for line in response:
            if until is not None and time.perf_counter() > until:
                break
            if line.startswith(b"event: "):
                found["event"] = line[7:].strip().decode()
            elif line.startswith(b"data: ") and found["event"] is None:
                found["first"] = found["first"] or time.perf_counter() - start
                found["pieces"] += 1
            elif line.startswith(b"data: "):
                found["error"] = json.loads(line[6:]).get("error")
        found["total"] = time.perf_counter() - start
        return found
    finally:
        connection.close()


def client(port: int, index: int, new_tokens: int, until: float, results: list) -> None:
    query = f"message=client+{index}+says+hello&max_new_tokens={new_tokens}"
    while time.perf_counter() < until:
        results.append(reply(port, query))


def million(port: int, until: float, counts: dict) -> None:
    """Asks for a million new tokens once a second; each must be refused at once."""
    while time.perf_counter() < until:
        found = reply(port, f"message=more&max_new_tokens={MILLION}")
        counts["million asked"] += 1
        counts["million refused"] += found["event"] == "failed" and "--max-new-tokens-cap" in found.get("error", "")
        time.sleep(1)


def long(port: int, cap: int, until: float, counts: dict) -> None:
    """Asks for the cap over and over, reading every token, until the phase ends."""
    while time.perf_counter() < until:
        found = reply(port, f"message=go+on&max_new_tokens={cap}", until)
        counts["long replies"] += found["event"] == "done"
        counts["long tokens"] += found["pieces"]


def stalled(port: int, cap: int, until: float, settle: float | None, counts: dict) -> None:
    """Asks for the cap and never reads it. At the end of the phase it leaves; or, given `settle`, waits that long
    more (time for the server to fill its buffers and give up on it) and reads what it was sent: a stream cut short,
    without `done`, if it was dropped."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /reply?message=hold&max_new_tokens={cap} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        time.sleep(max(0.0, until + (settle or 0) - time.perf_counter()))
        if settle is None:
            return
        sock.settimeout(30)
        received = b""
        while piece := sock.recv(65536):
            received += piece
    counts["stalled dropped"] = b"event: done" not in received
    counts["stalled tokens"] = received.count(b"data: ")


def percentiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return " / ".join(f"{1000 * v:5.0f}" for v in (cuts[49], cuts[89], cuts[98]))


def phase(port: int, args, seconds: float, counts: dict | None = None, settle: float | None = None) -> dict:
    """`args.clients` clients asking back to back for `seconds`; with `counts`, the hostile clients beside them."""
    results = []
    start = time.perf_counter()
    until = start + seconds
    clients = [threading.Thread(target=client, args=(port, i, args.new_tokens, until, results))
               for i in range(args.clients)]
    hostiles = [] if counts is None else [
        threading.Thread(target=million, args=(port, until, counts)),
        threading.Thread(target=long, args=(port, args.cap, until, counts)),
        threading.Thread(target=stalled, args=(port, args.cap, until, settle, counts))]
    for thread in clients + hostiles:
        thread.start()
    for thread in clients:
        thread.join()
    seconds = time.perf_counter() - start
    for thread in hostiles:
        thread.join()
    served = [r for r in results if r["status"] == 200]
    assert all(r["event"] == "done" and r["pieces"] == args.new_tokens for r in served), "a reply came back short"
    return {"served": served, "refused": len(results) - len(served), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0, help="each kind of phase, over all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32, help="each client's reply")
    parser.add_argument("--cap", type=int, default=2000, help="the server's --max-new-tokens-cap")
    parser.add_argument("--queue", type=int, default=32, help="the server's --queue")
    parser.add_argument("--client-timeout", type=float, default=2.0, help="the server's --client-timeout")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    port_out = context.Queue()
    server = context.Process(target=serve, args=(port_out, args.cap, args.queue, args.client_timeout), daemon=True)
    server.start()
    counts = dict.fromkeys(("million asked", "million refused", "long replies", "long tokens"), 0)
    rounds = {"alone": [], "hostile": []}
    try:
        port = port_out.get(timeout=120)
        phase(port, args, 2.0)  # warm up
        for i in range(args.rounds):
            rounds["alone"].append(phase(port, args, args.seconds / args.rounds))
            last = i == args.rounds - 1  # its non-reading client stays to be dropped, then reads what it got
            rounds["hostile"].append(phase(port, args, args.seconds / args.rounds, counts,
                                           settle=4 * args.client_timeout + 4 if last else None))
    finally:
        server.terminate()
        server.join()
    report(args, rounds, counts)


def report(args, rounds: dict[str, list[dict]], counts: dict) -> None:
    print(f"random GPT L4 H4 d128, server torch on 1 thread; {args.clients} clients, {args.new_tokens} new tokens a "
          f"reply; {args.rounds} rounds of {args.seconds / args.rounds:g} s alone, then {args.seconds / args.rounds:g} "
          f"s with the hostile clients; --max-new-tokens-cap {args.cap}, --queue {args.queue}, --client-timeout "
          f"{args.client_timeout:g}")
    print(f"{'phase':8} {'replies':>7} {'refused':>7} {'replies/s':>9} {'tokens/s':>8}   first token p50/p90/p99 ms"
          f"   whole reply p50/p90/p99 ms")
    for name, phases in rounds.items():
        served = [r for found in phases for r in found["served"]]
        seconds = sum(found["seconds"] for found in phases)
        tokens = sum(r["pieces"] for r in served) + (counts["long tokens"] if name == "hostile" else 0)
        print(f"{name:8} {len(served):7d} {sum(found['refused'] for found in phases):7d} {len(served) / seconds:9.1f} "
              f"{tokens / seconds:8.0f}   {percentiles([r['first'] for r in served]):>26}"
              f"   {percentiles([r['total'] for r in served]):>26}")
    print(f"hostile: million-token requests refused {counts['million refused']} of {counts['million asked']}; "
          f"cap-length replies read {counts['long replies']} ({counts['long tokens']} tokens); the last non-reading "
          f"client {'was dropped' if counts['stalled dropped'] else 'was NOT dropped'} after {counts['stalled tokens']} "
          f"of its {args.cap} tokens")
    ratios = {key: statistics.median(
        statistics.median(r[key] for r in hostile["served"]) / statistics.median(r[key] for r in alone["served"])
        for alone, hostile in zip(rounds["alone"], rounds["hostile"])) for key in ("first", "total")}
    print(f"p50 with the hostile clients / alone (median of the rounds): first token {ratios['first']:.2f}x, whole "
          f"reply {ratios['total']:.2f}x (a fair share for the reading cap-length client: "
          f"{(args.clients + 1) / args.clients:.2f}x)")


if __name__ == "__main__":
    main()
