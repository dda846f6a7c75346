"""What clients may take from `picolm serve` (its `--max-new-tokens-cap`, `--queue`, `--client-timeout`,
`--connections`, `--conversations`), with their help and ranges; light to import, so `picolm --help` does not wait
for torch."""

from __future__ import annotations

from dataclasses import dataclass

from picolm.config import (
    MAX_NEW_TOKENS,
    SamplingOptions,
    flag,
    range_checks,
    real,
    refuse_failed,
    setting,
    whole,
)
from picolm.errors import PicolmError


@dataclass(frozen=True)
class ServeLimits:
    """What one client may take from the server; checked when made."""

    max_new_tokens_cap: int = setting(1000, "the most new tokens one request may ask for; a request for more is "
                                            "refused (its reply is a `failed` event)", within=whole(1, MAX_NEW_TOKENS))
    queue: int = setting(16, "replies in progress at once, taking turns on the model a token at a time; one more "
                             "is refused with HTTP 503", within=whole(1, 1000))
    client_timeout: float = setting(10.0, "seconds a client may take to send its whole request, or to take the next "
                                          "part of its reply, before it is dropped",
                                    within=real(0, 86400, above=True, tiny=0.001))
    connections: int = setting(32, "clients served at once (pages, replies, idle connections); more wait to be "
                                   "accepted. Must exceed --queue, so a client beyond the queue hears it is full",
                               within=whole(2, 4096))
    conversations: int = setting(100, "conversations kept, one per page opened, each its turns that still fit the "
                                      "context; beyond them the least recently used is forgotten (its page is told "
                                      "to reload)", within=whole(1, 100_000))

    def __post_init__(self):
        checks = range_checks(self) + [(self.connections > self.queue, "connections",
                                        f"must exceed --queue ({self.queue}) (got {self.connections})")]
        refuse_failed([(ok, flag(name), why) for ok, name, why in checks])

    def check(self, options: SamplingOptions) -> None:
        """Refuse more new tokens than the cap."""
        if options.max_new_tokens > self.max_new_tokens_cap:
            raise PicolmError(f"at most {self.max_new_tokens_cap} on this server (--max-new-tokens-cap; got "
                              f"{options.max_new_tokens})", field="--max-new-tokens")
