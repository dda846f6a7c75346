"""Hugging Face causal LMs behind picolm's model interface (tiny random GPT-2 and Llama, offline)."""

from __future__ import annotations

import ast
import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from picolm.data.examples import PairExamples, collate_pairs
from picolm.errors import PicolmError
from picolm.interop.hf import HFCausalLM, hf_checkpoint_config, hf_model_from_checkpoint, load_hf_model
from picolm.loading import load_model
from picolm.data.examples import IGNORE_INDEX
from picolm.tokenizer import EOS, train_bpe
from picolm.checkpoint import load_checkpoint, save_checkpoint
from picolm.methods.sequences import sequence_log_probs

transformers = pytest.importorskip("transformers")

VOCAB = 300
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song", "tiny models learn fast"] * 4


def _tiny(kind: str, eos: int):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=64,
                                         bos_token_id=eos, eos_token_id=eos)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, hf_offline):
    """{kind: (folder written by save_pretrained, the original HF model)} with a byte-level BPE beside each
    (saved as tokenizer.json), and that BPE under "tokenizer"."""
    tok = train_bpe(TEXTS, vocab_size=280)
    assert tok.vocab_size <= VOCAB
    out = {}
    for kind in ("gpt2", "llama"):
        folder = tmp_path_factory.mktemp(kind)
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok.tok, eos_token=EOS).save_pretrained(folder)
        model = _tiny(kind, tok.eos_id)
        model.save_pretrained(folder)
        out[kind] = (folder, model)
    out["tokenizer"] = tok
    return out


@pytest.fixture(scope="module")
def loaded(saved):
    """{kind: load_hf_model(folder)}, shared: tests that change a model put it back."""
    return {kind: load_hf_model(str(saved[kind][0])) for kind in ("gpt2", "llama")}


def _ids(seed: int, shape) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_loaded_model_gives_the_hf_logits_and_tokenizer(saved, loaded, kind):
    reference = saved[kind][1]
    model, tokenizer = loaded[kind]
    assert isinstance(model, HFCausalLM)
    model.eval()
    idx = _ids(0, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference(idx).logits, atol=1e-5, rtol=0)
    assert tokenizer.kind == "hf" and tokenizer.vocab_size <= model.config.vocab_size
    assert tokenizer.eos_id == tokenizer.tok.token_to_id(EOS)
    assert tokenizer.decode(tokenizer.encode("the cat sat")) == "the cat sat"
    with torch.no_grad():  # positions without a mask: plain causal attention, as GPT reads them
        plain = model(idx)
        torch.testing.assert_close(model(idx, positions=torch.arange(12).expand(2, 12)), plain, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(idx, positions=torch.arange(12)), plain, atol=1e-6, rtol=0)
    c = model.config
    assert (c.arch, c.n_layer, c.n_embd, c.block_size, c.vocab_size) == ("hf", 2, 32, 64, VOCAB)
    assert c.n_head == (2 if kind == "gpt2" else 4) and c.tie_weights == (kind == "gpt2")
    assert model.hf_config_dict()["model_type"] == kind
    assert model.num_params() == sum(p.numel() for p in reference.parameters())
    with pytest.raises(ValueError, match="block_size"):
        model(_ids(0, (1, 65)))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_fused_loss_and_log_probs_match_the_hf_logits(saved, loaded, kind):
    reference = saved[kind][1]
    model, _ = loaded[kind]
    model.eval()
    idx, targets = _ids(1, (3, 10)), _ids(2, (3, 10))
    targets[0, :4] = IGNORE_INDEX
    targets[2, 7:] = IGNORE_INDEX
    logits = reference(idx).logits
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    loss, correct, counted = model(idx, targets)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    valid = targets != IGNORE_INDEX
    assert int(counted) == int(valid.sum())
    assert int(correct) == int(((logits.argmax(-1) == targets) & valid).sum())

    # the gradients of the fused loss are the HF loss's
    loss.backward()
    expected.backward()
    ours = dict(model.hf.named_parameters())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(ours[name].grad, p.grad, atol=1e-5, rtol=1e-4)
    reference.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)

    predict_at = torch.tensor([0, 5, 9, 13, 29])
    flat_targets = _ids(3, (5,))
    with torch.no_grad():
        log_probs = model(idx, flat_targets, predict_at=predict_at)
        expected_lp = logits.detach().flatten(0, 1)[predict_at].log_softmax(-1).gather(1, flat_targets[:, None])
    torch.testing.assert_close(log_probs, expected_lp.squeeze(1), atol=1e-5, rtol=0)

    # heads the fused path cannot take (soft-capped or scaled logits) go through the HF logits: same answers
    model._fused = False
    try:
        with torch.no_grad():
            unfused = model(idx, targets)
            torch.testing.assert_close(model(idx, flat_targets, predict_at=predict_at), log_probs, atol=1e-5, rtol=0)
    finally:
        model._fused = True
    torch.testing.assert_close(unfused[0], expected.detach(), atol=1e-5, rtol=0)
    assert (int(unfused[1]), int(unfused[2])) == (int(correct), int(counted))


def _separate_log_probs(reference, prompt, response) -> float:
    ids = torch.from_numpy(np.concatenate([prompt, response]))[None]
    with torch.no_grad():
        log_probs = reference(ids).logits[0].log_softmax(-1)
    P = len(prompt)
    return float(sum(log_probs[P - 1 + k, int(t)] for k, t in enumerate(response)))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_packed_pairs_match_separate_forwards(saved, loaded, kind, attn):
    reference = saved[kind][1]
    model, _ = loaded[kind]
    model.eval()
    rng = np.random.default_rng(4)
    lengths = [(3, 4, 6), (5, 2, 3), (1, 5, 5)]  # ragged: the rows are padded
    examples = PairExamples(*([rng.integers(0, VOCAB, n) for n in column] for column in zip(*lengths)))
    batch = collate_pairs(examples, [0, 1, 2], pad_id=0)
    model.hf.set_attn_implementation(attn)
    try:
        with torch.no_grad():
            chosen, rejected = sequence_log_probs(model, batch)
    finally:
        model.hf.set_attn_implementation("sdpa")
    expected_chosen = [_separate_log_probs(reference, examples.prompts[i], examples.chosen[i]) for i in range(3)]
    expected_rejected = [_separate_log_probs(reference, examples.prompts[i], examples.rejected[i]) for i in range(3)]
    torch.testing.assert_close(chosen, torch.tensor(expected_chosen), atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, torch.tensor(expected_rejected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_checkpoint_round_trip(loaded, kind, tmp_path):
    model, tokenizer = loaded[kind]
    model_config = hf_checkpoint_config(model)
    assert model_config["arch"] == "hf" and model_config["block_size"] == 64 and model_config["vocab_size"] == VOCAB
    assert model_config["hf_config"]["model_type"] == kind
    save_checkpoint({"architecture": "hf", "model_config": model_config,
                     "model_state_dict": model.state_dict(), "tokenizer": tokenizer.to_dict()}, tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt", mmap=True)  # weights_only=True: the config must be plain data
    rebuilt = hf_model_from_checkpoint(state["model_config"], state["model_state_dict"]).eval()
    assert rebuilt.config == model.config
    assert next(rebuilt.parameters()).dtype == torch.float32
    idx = _ids(5, (2, 9))
    with torch.no_grad():
        assert torch.equal(rebuilt(idx), model.eval()(idx))
    if kind == "gpt2":  # tied weights stay tied
        assert rebuilt.hf.lm_head.weight is rebuilt.hf.transformer.wte.weight
    with pytest.raises(PicolmError, match="--dtype float32") as refused:  # low precision is for picolm's networks
        load_model(tmp_path / "c.pt", dtype="int8")
    assert refused.value.field == "--dtype"


def test_grad_checkpointing_switches_the_hf_model(saved):
    model, _ = load_hf_model(str(saved["llama"][0]))
    model.train()
    model.grad_checkpointing = True
    assert model.grad_checkpointing and model.hf.is_activation_checkpointing
    loss, _, _ = model(_ids(6, (2, 8)), _ids(7, (2, 8)))
    loss.backward()
    assert model.hf.get_output_embeddings().weight.grad is not None
    model.grad_checkpointing = False
    assert not model.grad_checkpointing and not model.hf.is_activation_checkpointing
    twin = copy.deepcopy(model).eval()  # what a live DPO reference is made by
    idx = _ids(8, (1, 8))
    with torch.no_grad():
        assert torch.equal(twin(idx), model.eval()(idx))


def _hub_offline(monkeypatch):
    """huggingface_hub read HF_HUB_OFFLINE when transformers was imported (at collection): set what it read."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    module = sys.modules[huggingface_hub.is_offline_mode.__module__]
    if hasattr(module, "HF_HUB_OFFLINE"):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)


def test_loading_errors_name_the_path_and_field(saved, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(PicolmError, match="train.hf_model") as info:
        load_hf_model(str(missing))
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(PicolmError, match="runs/model: train.hf_model: no such folder"):  # local, not a hub name
        load_hf_model("runs/model")

    with pytest.raises(PicolmError, match="no config.json"):
        load_hf_model(str(tmp_path))

    vit = tmp_path / "vit"
    transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32).save_pretrained(vit)
    with pytest.raises(PicolmError, match="not a causal language model") as info:
        load_hf_model(str(vit))
    assert str(vit) in str(info.value) and "\n" not in str(info.value)

    _hub_offline(monkeypatch)
    with pytest.raises(PicolmError, match="Hugging Face hub") as info:
        load_hf_model("picolm-tests/no-such-model")
    assert "picolm-tests/no-such-model: train.hf_model:" in str(info.value) and "\n" not in str(info.value)

    bare = tmp_path / "bare"  # a model without a tokenizer
    saved["gpt2"][1].save_pretrained(bare)
    with pytest.raises(PicolmError, match="tokenizer"):
        load_hf_model(str(bare))


def test_folder_without_tokenizer_json_uses_vocab_and_merges(saved, tmp_path):
    """A folder with the slow tokenizer's vocab.json + merges.txt: AutoTokenizer converts it."""
    tok = saved["tokenizer"]
    saved["gpt2"][1].save_pretrained(tmp_path)
    tok.tok.model.save(str(tmp_path))
    assert not (tmp_path / "tokenizer.json").exists()
    _, tokenizer = load_hf_model(str(tmp_path))
    assert tokenizer.eos_id == tok.eos_id and tokenizer.vocab_size == tok.vocab_size
    assert tokenizer.encode("the cat sat") == tok.encode("the cat sat")


def test_module_imports_transformers_lazily():
    """Only inside functions: `import picolm.interop.hf` must not pay for transformers."""
    import picolm.interop.hf as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "transformers"]


def test_a_shorter_context_applies_to_a_hugging_face_model_and_its_dropout_is_refused(saved, tmp_path, capsys):
    from picolm.cli import main
    from picolm.data.pack import prepare
    from picolm.data.preparation import PrepareOptions
    from picolm.loading import load_model

    folder = saved["llama"][0]
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"{t} number {i}" for i, t in enumerate(TEXTS * 10)))
    data = tmp_path / "data"
    prepare(PrepareOptions(source=str(text), out=str(data), tokenizer=f"hf:{folder}"), log=lambda *a: None)
    base = ["train", "--data", str(data), "--hf-model", str(folder), "--train.max_steps", "1", "--train.batch_size",
            "2", "--train.eval_batches", "1", "--log.progress", "false"]
    assert main([*base, "--out", str(tmp_path / "short"), "--model.block_size", "16"]) == 0
    assert load_model(tmp_path / "short").model.config.block_size == 16  # not the model's 64 positions again
    assert main([*base, "--out", str(tmp_path / "dropout"), "--model.dropout", "0.1"]) == 2
    assert "model.dropout" in capsys.readouterr().err
