"""Decoding: the KV cache against full recomputation and against transformers' generate, left-padded batches,
sampling filters against transformers' logits processors, stop strings, streaming and bad settings."""

import pytest
import torch

from picolm.config import ModelConfig, SamplingOptions
from picolm.errors import PicolmError
from picolm.generate import TextGenerator, TextStream, generate_ids
from picolm.methods.sampling import LeftToRight, filter_logits, penalize_repeats
from picolm.interop.convert import to_gpt2
from picolm.models.gpt import GPT

GREEDY = SamplingOptions(max_new_tokens=24, temperature=0.0)


def model_with(**overrides) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(**{**dict(n_layer=2, n_head=4, n_embd=32, block_size=48, vocab_size=97), **overrides})
    model = GPT(config)
    with torch.no_grad():  # larger weights than at initialisation: continuations depend on the context
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def recomputed_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding the slow way: the whole context through forward() at every step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


class CharTokenizer:
    """Characters as tokens, "#" as EOS: enough to test text handling."""

    alphabet = "#abcdefghijklmnopqrstuvwxyz .,!?\n"
    eos_id, vocab_size = 0, len(alphabet)

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i] for i in ids)


@pytest.mark.parametrize("position", ["learned", "rope", "none"])
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_the_kv_cache_decodes_what_full_recomputation_decodes(position, mlp):
    model = model_with(position=position, mlp=mlp)
    prompt = [5, 17, 42, 8, 3]
    assert generate_ids(model, [prompt], GREEDY) == [recomputed_greedy(model, prompt, 24)]


def test_cached_logits_match_the_full_forward_at_every_step():
    model = model_with(position="rope")
    idx = torch.randint(0, 97, (2, 20))
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(idx)
        steps = [model.decode(idx[:, :8], cache)] + [model.decode(idx[:, t:t + 1], cache) for t in range(8, 20)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 7:], atol=1e-5, rtol=1e-5)


def test_greedy_continuations_match_transformers_token_for_token():
    model = model_with(position="learned")
    hf = to_gpt2(model)
    for prompt in ([5, 17, 42, 8], [1], list(range(30, 46))):
        theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)
        assert generate_ids(model, [prompt], GREEDY) == [theirs[0, len(prompt):].tolist()]


def test_left_padded_batches_match_transformers_and_single_prompts():
    model = model_with(position="learned")
    hf = to_gpt2(model)
    prompts = [[5, 17, 42, 8], [1, 2], list(range(30, 40))]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                         pad_token_id=0)[:, width:].tolist()
    options = SamplingOptions(max_new_tokens=20, temperature=0.0)
    assert generate_ids(model, prompts, options) == theirs
    assert [generate_ids(model, [p], options)[0] for p in prompts] == theirs


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    model = model_with(position="learned")
    hf = to_gpt2(model)
    prompt = [5, 17, 42, 8, 5]
    theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                         max_new_tokens=24, min_new_tokens=24, do_sample=False, repetition_penalty=1.7,
                         pad_token_id=0)[0, 5:].tolist()
    options = SamplingOptions(max_new_tokens=24, temperature=0.0, repetition_penalty=1.7)
    assert generate_ids(model, [prompt], options) == [theirs]

    logits, seen_ids = torch.randn(3, 50), torch.randint(0, 50, (3, 7))
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, seen_ids, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(seen_ids, logits.clone())
    torch.testing.assert_close(penalize_repeats(logits, seen, 1.3), expected)


def test_top_k_and_top_p_keep_what_transformers_keeps():
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(3)
    logits = torch.randn(4, 60) * 3
    ids = torch.zeros(4, 1, dtype=torch.long)
    for k in (1, 5, 59):
        assert torch.equal(filter_logits(logits, top_k=k).isinf(), TopKLogitsWarper(k)(ids, logits.clone()).isinf())
    for p in (0.1, 0.5, 0.9):
        assert torch.equal(filter_logits(logits, top_p=p).isinf(), TopPLogitsWarper(p)(ids, logits.clone()).isinf())


def test_sampling_is_seeded_and_filters_apply():
    model = model_with()
    prompt = [[3, 4, 5]]
    sample = SamplingOptions(max_new_tokens=30, temperature=1.5, seed=7)
    first = generate_ids(model, prompt, sample)
    assert first == generate_ids(model, prompt, sample)
    assert first != generate_ids(model, prompt, SamplingOptions(max_new_tokens=30, temperature=1.5, seed=8))
    greedy = generate_ids(model, prompt, SamplingOptions(max_new_tokens=30, temperature=0.0))
    for narrow in (SamplingOptions(max_new_tokens=30, temperature=1.5, top_k=1, seed=1),
                   SamplingOptions(max_new_tokens=30, temperature=1.5, top_p=1e-6, seed=1)):
        assert generate_ids(model, prompt, narrow) == greedy


def test_eos_ends_each_row_on_its_own():
    model = model_with()
    prompts = [[3, 4, 5], [9, 9], [60]]
    free = generate_ids(model, prompts, SamplingOptions(max_new_tokens=20, temperature=0.0))
    eos = free[0][5]
    stopped = generate_ids(model, prompts, SamplingOptions(max_new_tokens=20, temperature=0.0), eos_id=eos)
    for row, out in zip(free, stopped):
        assert out == (row[:row.index(eos)] if eos in row else row)


def test_generation_slides_past_the_context():
    model = model_with(position="rope", block_size=16)
    prompt = [1, 2, 3, 4]
    out = generate_ids(model, [prompt], SamplingOptions(max_new_tokens=40, temperature=0.0))[0]
    assert len(out) == 40
    assert out[:12] == recomputed_greedy(model, prompt, 12)  # until the context is full, nothing differs


def test_a_model_without_a_cache_recomputes_and_agrees():
    model = model_with(position="learned")

    class NoCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, idx, positions=None, attn_mask=None):
            return self.inner(idx, positions=positions, attn_mask=attn_mask)

    prompts = [[5, 17, 42, 8], [1, 2]]
    assert generate_ids(NoCache(), prompts, GREEDY) == generate_ids(model, prompts, GREEDY)


def test_stop_strings_end_the_text_and_streaming_holds_them_back():
    stream = TextStream(CharTokenizer(), stop=("the end",))
    pieces = [stream.push(i) for i in CharTokenizer().encode("so it was the en")]
    assert "".join(pieces) == "so it was "  # "the en" may become the stop string: held back
    assert stream.push(CharTokenizer().encode("d")[0]) == "" and stream.stopped
    assert stream.text == "so it was "

    stream = TextStream(CharTokenizer(), stop=("the end",))
    pieces = [stream.push(i) for i in CharTokenizer().encode("the enemy")]
    assert "".join(pieces) + stream.flush() == "the enemy" and not stream.stopped


def test_streamed_pieces_add_up_to_the_completion():
    torch.manual_seed(0)
    model = model_with(vocab_size=CharTokenizer.vocab_size)
    generator = TextGenerator(model, CharTokenizer())
    options = SamplingOptions(max_new_tokens=40, temperature=1.0, seed=3, stop=("e",))
    streamed = "".join(generator.stream("hello", options))
    assert streamed == generator.complete(["hello"], options)[0]
    assert "e" not in streamed


def test_long_prompts_keep_their_end_and_say_so():
    model = model_with(vocab_size=CharTokenizer.vocab_size, block_size=16)
    warnings = []
    generator = TextGenerator(model, CharTokenizer(), warn=warnings.append)
    assert generator.encode_prompt("abcdefghijklmnopqrstuvwxyz") == CharTokenizer().encode("klmnopqrstuvwxyz")[1:]
    assert "26 tokens" in warnings[0] and "last 15" in warnings[0]
    assert generator.encode_prompt("") == [CharTokenizer.eos_id]


@pytest.mark.parametrize("field, value", [("max_new_tokens", 0), ("max_new_tokens", -3), ("temperature", -1.0),
                                          ("top_k", 0), ("top_p", 1.5), ("repetition_penalty", 0.0)])
def test_bad_settings_name_the_option(field, value):
    options = SamplingOptions(**{field: value})
    with pytest.raises(PicolmError, match="--" + field.replace("_", "-")):
        list(LeftToRight().steps(model_with(), [[1, 2]], options))
