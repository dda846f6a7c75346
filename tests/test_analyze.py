"""`picolm analyze`: embedding PCA, attention maps and neuron selectivity, their files and their numbers."""

import json

import numpy as np
import pytest
import torch

from picolm.analysis.interpret import (KindAccumulator, analyze_run, attention_weights, encode_input, pca_2d,
                                       selectivity, selectivity_table, token_category)
from picolm.cli import main
from picolm.config import ModelConfig
from picolm.errors import PicolmError
from picolm.models.gpt import GPT
from picolm.loading import load_model
from picolm.tokenizer import numeric_tokenizer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def analysis(trained_run, tmp_path_factory):
    """Every analysis of the tiny trained run, once, through the CLI."""
    out = tmp_path_factory.mktemp("analysis")
    assert main(["analyze", str(trained_run), "--out", str(out), "--max-windows", "8"]) == 0
    return out


def test_analyze_writes_titled_pngs_and_the_neuron_table(analysis, numeric_data):
    for name in ("embedding_pca.png", "attention.png", "neurons.png"):
        assert (analysis / name).read_bytes()[:8] == PNG, name
    table = json.loads((analysis / "neurons.json").read_text())
    kinds = json.loads((numeric_data / "meta.json").read_text())["kinds"]
    assert table["kinds"] == kinds and table["tokens"] == sum(table["tokens_per_kind"].values()) > 0
    assert len(table["layers"]) == 2
    for layer in table["layers"]:
        assert layer["units"] == 4 * 32 == len(layer["neurons"]) == sum(layer["summary"].values())
        unit = layer["neurons"][0]
        assert unit["preferred"] in kinds and set(unit["means"]) == set(kinds)
        assert unit["means"][unit["preferred"]] == max(unit["means"].values())


def test_default_output_folder_is_inside_the_run(trained_run, capsys):
    assert main(["analyze", str(trained_run), "--what", "pca"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {trained_run / 'analysis' / 'embedding_pca.png'}"


def test_pca_matches_an_independent_svd():
    weights = torch.randn(50, 8) * torch.linspace(3, 0.5, 8)
    coords, ratio = pca_2d(weights)
    centred = weights.double().numpy() - weights.double().numpy().mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    expected = u[:, :2] * s[:2]
    signs = np.sign((coords * expected).sum(0))  # a component's sign is a convention
    np.testing.assert_allclose(coords, expected * signs, atol=1e-9)
    np.testing.assert_allclose(ratio, s[:2] ** 2 / (s ** 2).sum())


@pytest.mark.parametrize("options", [{"position": "learned"}, {"position": "rope"}, {"attention": "linear"},
                                     {"attention": "linear", "position": "rope"}, {"differential": True}])
def test_attention_rows_are_distributions_and_causal(options):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=20, **options)).eval()
    maps = attention_weights(model, [0, 5, 6, 7, 8, 9])
    assert len(maps) == 2 and maps[0].shape == (2, 6, 6)
    past = torch.ones(6, 6, dtype=torch.bool).tril()
    for weights in maps:
        assert (weights[:, ~past] == 0).all()
        if options == {"attention": "linear", "position": "rope"}:
            continue  # RoPE rotates the kernel's numerator only: the rows are weights, no longer a distribution
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 6))
        assert (weights[:, past] > 0).all()


def test_bidirectional_attention_sees_the_future():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20, causal=False)).eval()
    weights = attention_weights(model, [1, 2, 3, 4])[0]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
    assert (weights > 0).all()


def test_the_maps_are_those_of_the_model_forward():
    """The captured per-layer inputs are the real ones: the weights reproduce each attention's output."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=20, bias=False)).eval()
    ids = [3, 1, 4, 1, 5]
    maps = attention_weights(model, ids)
    x, rotary, _ = model.embed(torch.tensor([ids]), torch.arange(5))
    for block, weights in zip(model.blocks, maps):
        h = block.ln_1(x)
        _, _, v = block.attn._heads(h, rotary)
        mixed = (weights[None] @ v).transpose(1, 2).reshape(1, 5, 16)
        torch.testing.assert_close(block.attn.proj(mixed), block.attn(h, rotary), atol=1e-5, rtol=1e-5)
        x = block(x, rotary)


def test_selectivity_finds_the_unit_that_fires_for_one_kind():
    rng = np.random.default_rng(0)
    kinds = torch.from_numpy(rng.integers(0, 3, size=3000))
    activations = torch.zeros(3000, 3, dtype=torch.float64)
    activations[:, 0] = (kinds == 2).double() * 2.0  # fires only for kind 2
    activations[:, 1] = torch.from_numpy(rng.normal(size=3000))  # noise, no preference
    activations[:, 2] = (kinds == 0).double() + torch.from_numpy(rng.normal(scale=0.1, size=3000))  # kind 0, noisy
    accumulator = KindAccumulator(units=3, n_kinds=3)
    for part in range(3):  # in batches, as the model's windows come
        accumulator.add(activations[part::3], kinds[part::3])
    stats = accumulator.result()
    np.testing.assert_allclose(stats.means[0], [0, 0, 2])
    np.testing.assert_allclose(stats.std, activations.std(0, unbiased=False).numpy(), rtol=1e-9)
    preferred, index = selectivity(stats)
    assert preferred[0] == 2 and preferred[2] == 0
    assert index[0] > 2.0 and index[2] > 1.5 and abs(index[1]) < 0.1
    table = selectivity_table([stats], ["a", "b", "c"])[0]
    assert [unit["preferred"] for unit in table["neurons"]][::2] == ["c", "a"]
    assert table["summary"] == {"a": 1, "b": 0, "c": 1, "unselective": 1}


def test_long_text_is_cut_with_a_note_and_empty_text_refused():
    tokenizer = numeric_tokenizer(99)
    notes = []
    ids = encode_input(tokenizer, " ".join(map(str, range(90))), block_size=32, log=notes.append)
    assert ids == tokenizer.encode(" ".join(map(str, range(32)))) and "first 32" in notes[0]
    with pytest.raises(PicolmError, match="--text: the text encodes to no tokens"):
        encode_input(tokenizer, "   ", block_size=32)


def test_token_categories():
    assert [token_category(t) for t in (" the", "ing", " 42", ",", "\n", " é…")] == \
        ["word start", "word piece", "digits", "punctuation", "whitespace", "other"]


def test_stories_data_has_no_kinds_and_the_plot_is_skipped(trained_run, tmp_path):
    stories = tmp_path / "stories"
    stories.mkdir()
    (stories / "meta.json").write_text(json.dumps({"kinds": None, "eos_id": 0}))
    notes = []
    written = analyze_run(trained_run, "neurons", data=stories, out=tmp_path / "out", log=notes.append)
    assert written == [] and "no sequence kinds" in notes[0]


@pytest.mark.parametrize("args, message", [
    (["analyze", "no/such/run"], "no/such/run: no such run directory or checkpoint"),
    (["analyze", "RUN", "--what", "pca,graphs"], "--what: expected some of pca, attention, neurons"),
    (["analyze", "RUN", "--what", "attention", "--text", "apple"], "'apple' is not in the numeric vocabulary"),
    (["analyze", "RUN", "--what", "neurons", "--data", "no/such/data"], "no/such/data: no such data directory"),
])
def test_bad_input_is_one_line_with_status_2(args, message, trained_run, capsys):
    args = [str(trained_run) if a == "RUN" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_checkpoint_file_is_analyzed_too(trained_run, tmp_path):
    loaded = load_model(trained_run)
    written = analyze_run(loaded.path, "attention", text="1 2 3", out=tmp_path, log=lambda *a: None)
    assert written == [tmp_path / "attention.png"]
