"""How much of what a model writes comes from a word list: the built-in horror lexicon or the user's own file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from picolm.data.specs import HORROR_LEXICON, lexicon_rate
from picolm.errors import PicolmError


@dataclass(frozen=True)
class Lexicon:
    name: str
    words: frozenset[str]

    def rate(self, text: str) -> float:
        return lexicon_rate(text, self.words)

    def mean_rate(self, texts: list[str]) -> float:
        """The rate of each text, averaged over the texts (each text weighs the same, however long)."""
        return sum(map(self.rate, texts)) / len(texts) if texts else 0.0


HORROR = Lexicon("horror", HORROR_LEXICON)


def load_lexicon(path: str | Path) -> Lexicon:
    """One word per line (lower-cased); blank lines and everything after a `#` are left out."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PicolmError("no such lexicon file", path=path, field="--lexicon") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PicolmError(f"cannot read the lexicon ({exc})", path=path, field="--lexicon") from None
    words = set()
    for number, line in enumerate(lines, start=1):
        word = line.split("#", 1)[0].strip().lower()
        if len(word.split()) > 1:
            raise PicolmError(f"one word per line, got {word!r}", path=path, line=number, field="--lexicon")
        if word:
            words.add(word)
    if not words:
        raise PicolmError("the lexicon has no words (one word per line, # comments)", path=path, field="--lexicon")
    return Lexicon(path.stem, frozenset(words))
