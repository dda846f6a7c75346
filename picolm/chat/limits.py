"""What one client may take from `picolm serve` (its `--max-new-tokens-cap`, `--queue`, `--client-timeout`,
`--connections`), with their help; light to import, so `picolm --help` does not wait for torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from picolm.config import SamplingOptions, flag
from picolm.errors import PicolmError


def setting(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServeLimits:
    """What one client may take from the server; checked when made."""

    max_new_tokens_cap: int = setting(1000, "the most new tokens one request may ask for; a request for more is "
                                            "refused (its reply is a `failed` event)")
    queue: int = setting(16, "replies in progress at once, taking turns on the model a token at a time; one more "
                             "is refused with HTTP 503")
    client_timeout: float = setting(10.0, "seconds a client may take to send its whole request, or to take the next "
                                          "part of its reply, before it is dropped")
    connections: int = setting(32, "clients served at once (pages, replies, idle connections); more wait to be "
                                   "accepted. Must exceed --queue, so a client beyond the queue hears it is full")

    def __post_init__(self):
        checks = [
            (self.max_new_tokens_cap >= 1, "max_new_tokens_cap", "must be at least 1"),
            (self.queue >= 1, "queue", "must be at least 1"),
            (math.isfinite(self.client_timeout) and self.client_timeout > 0, "client_timeout",
             "must be a positive number of seconds"),
            (self.connections > self.queue, "connections", f"must exceed --queue ({self.queue})"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise PicolmError(f"{why} (got {getattr(self, name)!r})", field=flag(name))

    def check(self, options: SamplingOptions) -> None:
        """Refuse more new tokens than the cap."""
        if options.max_new_tokens > self.max_new_tokens_cap:
            raise PicolmError(f"at most {self.max_new_tokens_cap} on this server (--max-new-tokens-cap; got "
                              f"{options.max_new_tokens})", field="--max-new-tokens")
