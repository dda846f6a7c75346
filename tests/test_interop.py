"""Hugging Face interop: GPT-2 checkpoints (save_pretrained folders) imported as native picolm models, checked
against transformers itself."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from picolm.cli import main
from picolm.data.loader import TokenWindows
from picolm.errors import PicolmError
from picolm.models.export import from_gpt2, to_gpt2
from picolm.models.loading import load_model, load_start
from picolm.tokenizer import EOS, hub_tokenizer, train_bpe

transformers = pytest.importorskip("transformers")

WORDS = "the cat sat on a mat while dogs ran in parks and birds sang songs near old trees".split()
N_POSITIONS = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: with the cores shared, more threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(200)]
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe(text_file):
    return train_bpe(text_file.read_text(encoding="utf-8").splitlines(), vocab_size=300)


def random_gpt2(vocab_size: int, eos: int, tie: bool = True, **settings):
    """A small GPT2LMHeadModel with its biases and norms moved off their initial 0 and 1."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=N_POSITIONS, vocab_size=vocab_size,
                                     bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=tie, **settings)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_with_tokenizer(model, tokenizer, folder):
    model.save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, eos_token=EOS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, hf_offline, bpe):
    """(a folder written by save_pretrained with a tokenizer.json beside it, the GPT2LMHeadModel in it)."""
    model = random_gpt2(bpe.vocab_size, bpe.eos_id)
    return save_with_tokenizer(model, bpe, tmp_path_factory.mktemp("gpt2")), model


def _ids(vocab_size: int, shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- import


def test_imported_gpt2_is_a_native_model_with_the_hf_logits(gpt2_folder, bpe):
    folder, reference = gpt2_folder
    loaded = load_start(str(folder))
    c = loaded.model.config
    assert type(loaded.model).__name__ == "GPT"
    assert (c.arch, c.position, c.mlp, c.norm, c.attention, c.bias, c.tie_weights, c.block_size, c.vocab_size) == \
        ("gpt", "learned", "gelu", "layernorm", "softmax", True, True, N_POSITIONS, bpe.vocab_size)
    idx = _ids(bpe.vocab_size, (3, N_POSITIONS))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx), reference(idx).logits, atol=1e-4, rtol=0)
    text = "the cat sat on a mat.<|endoftext|>birds sang"
    assert loaded.tokenizer.encode(text) == bpe.encode(text) and loaded.tokenizer.eos_id == bpe.eos_id


def test_untied_gpt2_imports_and_round_trips_exactly(bpe):
    reference = random_gpt2(bpe.vocab_size, bpe.eos_id, tie=False)
    model = from_gpt2(reference)
    assert not model.config.tie_weights and model.lm_head.weight is not model.wte.weight
    idx = _ids(bpe.vocab_size, (2, N_POSITIONS))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference(idx).logits, atol=1e-4, rtol=0)
    again = to_gpt2(model).state_dict()
    for name, weight in reference.state_dict().items():
        assert torch.equal(again[name], weight), name
    back = from_gpt2(to_gpt2(model))  # import(export(model)) is the model
    for name, weight in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], weight), name


def test_training_from_a_gpt2_folder_starts_at_the_hf_loss(gpt2_folder, text_file, tmp_path, capsys):
    folder, reference = gpt2_folder
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", "--source", str(text_file), "--out", str(data), "--tokenizer", f"hf:{folder}"]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), "--init-from", str(folder), "--train.max_steps",
                 "2", "--train.log_every", "1", "--train.batch_size", "4", "--train.eval_every", "2",
                 "--train.eval_batches", "1", "--train.num_samples", "0", "--log.progress", "false"]) == 0
    assert "a GPT-2 imported as a picolm model" in capsys.readouterr().out
    first = json.loads((run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0])
    batch = TokenWindows(data / "train.bin", N_POSITIONS, seed=1337).next_batch(4)  # the trainer's first batch
    with torch.no_grad():
        hf_loss = F.cross_entropy(reference(batch["input_ids"]).logits.flatten(0, 1), batch["targets"].flatten())
    assert first["step"] == 1 and first["train/loss"] == pytest.approx(float(hf_loss), abs=1e-5)
    trained = load_model(run)
    assert trained.model.config.block_size == N_POSITIONS and trained.tokenizer.encode("the cat") == \
        hub_tokenizer(str(folder)).encode("the cat")


def test_import_refusals_are_one_clear_line(numeric_data, bpe, tmp_path, monkeypatch, capsys):
    llama = tmp_path / "llama"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=bpe.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32)).save_pretrained(llama)
    with pytest.raises(PicolmError, match="train.init_from: model_type is 'llama'.*--hf-model"):
        load_start(str(llama))
    exact_gelu = save_with_tokenizer(random_gpt2(bpe.vocab_size, bpe.eos_id, activation_function="gelu"), bpe,
                                     tmp_path / "erf")
    with pytest.raises(PicolmError, match="activation_function is 'gelu'; picolm's GELU is the tanh approximation"):
        load_start(str(exact_gelu))
    with pytest.raises(PicolmError, match="no such run directory or checkpoint"):
        load_start(str(tmp_path / "nowhere"))

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PicolmError, match="picolm-tests/no-such-gpt2: train.init_from: could not load it from the "
                                          "Hugging Face hub") as info:
        load_start("picolm-tests/no-such-gpt2")
    assert "\n" not in str(info.value)

    capsys.readouterr()
    assert main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "run"), "--init-from", str(llama)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
