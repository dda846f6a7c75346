"""picolm models as transformers models: save_pretrained / AutoModelForCausalLM round trips, logits and losses
against picolm's own, generate against picolm's decoder (greedy, left-padded batches, beams), refusals for models
that do not write left to right, transformers' Trainer, and loading with trust_remote_code in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from picolm.config import ModelConfig
from picolm.errors import PicolmError
from picolm.config import SamplingOptions
from picolm.generate import generate_ids
from picolm.models.gpt import GPT
from picolm.data.examples import IGNORE_INDEX
from picolm.models.build import build_model

transformers = pytest.importorskip("transformers")
from picolm.interop.picolm_transformers import PicolmConfig, PicolmForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 97
VARIANTS = {
    "softmax-learned": {},
    "rope-swiglu": dict(position="rope", mlp="swiglu"),
    "linear": dict(attention="linear", chunk_size=8),
    "linear-rope": dict(attention="linear", position="rope", chunk_size=8),
    "differential": dict(differential=True, position="rope"),
    "none": dict(position="none"),
}
PROMPTS = [[5, 17, 42, 8, 3], [60], list(range(30, 41))]


def network_with(**overrides):
    """A picolm network with larger weights than at initialisation, so continuations depend on the context."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**dict(n_layer=2, n_head=4, n_embd=32, block_size=48, vocab_size=VOCAB),
                                       **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def saved_and_loaded(network, folder: Path):
    PicolmForCausalLM.from_model(network).save_pretrained(folder)
    return transformers.AutoModelForCausalLM.from_pretrained(folder)


def picolm_greedy(network, prompts, n: int) -> list[list[int]]:
    return generate_ids(network, prompts, SamplingOptions(max_new_tokens=n, temperature=0.0))


def hf_greedy(model, prompt: list[int], n: int, **kwargs) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, **kwargs)
    return out[0, len(prompt):].tolist()


def left_padded(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


# -- config -------------------------------------------------------------------------------------------------
def test_the_config_carries_every_model_field_and_the_transformers_names():
    model_config = ModelConfig(n_layer=3, n_head=2, n_embd=48, block_size=40, vocab_size=VOCAB, attention="linear",
                               feature_map="relu", chunk_size=16, tie_weights=False, differential=True)
    config = PicolmConfig.from_model_config(model_config, eos_token_id=7)
    assert config.to_model_config() == model_config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.max_position_embeddings, config.tie_word_embeddings, config.eos_token_id) == (48, 3, 2, 40, False, 7)
    assert PicolmConfig(hidden_size=64, num_hidden_layers=5).to_model_config() == ModelConfig(n_embd=64, n_layer=5)


def test_a_saved_config_loads_back_through_auto_config(tmp_path):
    model_config = ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, position="rope", rope_base=500.0,
                               causal=False, mask_id=VOCAB - 1)
    PicolmConfig.from_model_config(model_config, pad_token_id=0).save_pretrained(tmp_path)
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PicolmConfig)
    assert loaded.to_model_config() == model_config and loaded.pad_token_id == 0


def test_a_model_built_from_a_config_is_the_picolm_network_it_names():
    config = PicolmConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, block_size=16, mlp="swiglu")
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert isinstance(model, PicolmForCausalLM) and isinstance(model.to_picolm(), GPT)
    assert model.to_picolm().config == config.to_model_config()
    assert model.model.lm_head.weight is model.model.wte.weight
    assert {k for k in model.state_dict()} == {f"model.{k}" for k in model.to_picolm().state_dict()}


def test_from_model_wraps_the_network_without_touching_its_weights():
    network = network_with()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    model = PicolmForCausalLM.from_model(network, eos_token_id=4)
    assert model.to_picolm() is network and not model.training and model.config.eos_token_id == 4
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert model.generation_config.eos_token_id == 4


# -- logits, losses, round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_after_save_and_auto_load_equal_picolms(variant, tmp_path):
    network = network_with(**VARIANTS[variant])
    loaded = saved_and_loaded(network, tmp_path)
    assert isinstance(loaded, PicolmForCausalLM) and not loaded.training
    saved = network.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in loaded.to_picolm().state_dict().items())
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, network(ids), atol=1e-6, rtol=0)
        torch.testing.assert_close(PicolmForCausalLM.from_model(network)(ids).logits, network(ids), atol=1e-6, rtol=0)


def test_a_tied_head_is_stored_once_and_tied_again(tmp_path):
    loaded = saved_and_loaded(network_with(), tmp_path / "tied")
    with safe_open(tmp_path / "tied" / "model.safetensors", "pt") as f:
        assert "model.wte.weight" in f.keys() and "model.lm_head.weight" not in f.keys()
    assert loaded.model.lm_head.weight is loaded.model.wte.weight

    untied = network_with(tie_weights=False)
    loaded = saved_and_loaded(untied, tmp_path / "untied")
    with safe_open(tmp_path / "untied" / "model.safetensors", "pt") as f:
        assert "model.lm_head.weight" in f.keys()
    assert loaded.model.lm_head.weight is not loaded.model.wte.weight
    assert torch.equal(loaded.model.lm_head.weight, untied.lm_head.weight)


def test_the_loss_with_labels_is_picolms_mean_next_token_loss():
    network = network_with(position="rope")
    model = PicolmForCausalLM.from_model(network)
    ids = torch.randint(0, VOCAB, (3, 24))
    labels = ids.clone()
    labels[0, :10] = IGNORE_INDEX  # a prompt left out of the loss
    with torch.no_grad():
        loss, _, counted = network(ids[:, :-1], targets=labels[:, 1:])
        output = model(ids, labels=labels)
    assert int(counted) == 3 * 23 - 9
    torch.testing.assert_close(output.loss, loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_left_padding_leaves_the_real_tokens_logits_unchanged(causal):
    network = network_with(position="rope", causal=causal, mask_id=-1 if causal else VOCAB - 1)
    model = PicolmForCausalLM.from_model(network)
    ids, mask = left_padded(PROMPTS, pad_id=3)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        for row, prompt in enumerate(PROMPTS):
            alone = network(torch.tensor([prompt]))[0]
            torch.testing.assert_close(logits[row, ids.shape[1] - len(prompt):], alone, atol=1e-5, rtol=1e-5)


# -- generate -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generate_matches_picolms_decoder(variant):
    network = network_with(**VARIANTS[variant])
    model = PicolmForCausalLM.from_model(network)
    expected = picolm_greedy(network, PROMPTS, 24)
    for prompt, want in zip(PROMPTS, expected):
        assert hf_greedy(model, prompt, 24) == want
        assert hf_greedy(model, prompt, 24, use_cache=False) == want  # the whole prefix recomputed every step
    assert len({tuple(row) for row in expected}) == len(PROMPTS)  # the prompts matter


@pytest.mark.parametrize("variant", ["softmax-learned", "linear", "differential"])
def test_a_left_padded_batch_generates_what_each_prompt_does_alone(variant):
    network = network_with(**VARIANTS[variant])
    model = PicolmForCausalLM.from_model(network)
    ids, mask = left_padded(PROMPTS)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    batched = out[:, ids.shape[1]:].tolist()
    assert batched == [hf_greedy(model, p, 16) for p in PROMPTS]
    assert batched == picolm_greedy(network, PROMPTS, 16)


def test_beam_search_with_the_cache_matches_recomputation():
    model = PicolmForCausalLM.from_model(network_with(position="rope"))
    ids, mask = left_padded(PROMPTS)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), model.generate(ids, use_cache=False, **kwargs))


def test_generate_stops_with_an_error_at_the_context_length():
    model = PicolmForCausalLM.from_model(network_with())
    with pytest.raises(ValueError, match="longer than block_size=48"):
        model.generate(torch.tensor([list(range(40))]), max_new_tokens=20, do_sample=False)


def test_bad_inputs_are_refused():
    model = PicolmForCausalLM.from_model(network_with())
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, 6\)"):
        model(torch.ones(2, 6, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(PicolmError, match="model.arch: an hf model"):
        PicolmForCausalLM(PicolmConfig(arch="hf", vocab_size=VOCAB))


# -- models that do not write left to right -----------------------------------------------------------------
def sdd_network():
    return network_with(arch="sdd", causal=False, position="rope", ignore_id=VOCAB - 1, sdd_k=2)


@pytest.mark.parametrize("make", [lambda: network_with(causal=False, position="rope", mask_id=VOCAB - 1), sdd_network],
                         ids=["mdlm", "sdd"])
def test_denoisers_round_trip_and_give_logits_but_refuse_generate_and_labels(make, tmp_path):
    network = make()
    loaded = saved_and_loaded(network, tmp_path)
    saved = network.state_dict()
    assert saved.keys() == loaded.to_picolm().state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in loaded.to_picolm().state_dict().items())
    ids = torch.randint(0, VOCAB - 1, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, network(ids), atol=1e-6, rtol=0)
    with pytest.raises(PicolmError, match="left-to-right"):
        loaded.generate(ids, max_new_tokens=4)
    with pytest.raises(PicolmError, match="left-to-right"):
        loaded(ids, labels=ids)


# -- transformers' Trainer ----------------------------------------------------------------------------------
def test_transformers_trainer_trains_a_picolm_model(tmp_path):
    torch.manual_seed(0)
    model = PicolmForCausalLM(PicolmConfig(vocab_size=32, n_layer=2, n_head=2, n_embd=32, block_size=32,
                                           position="rope", differential=True))
    patterns = [torch.arange(start, start + 32) % 32 for start in range(16)]  # counting modulo 32
    rows = [{"input_ids": p, "labels": p} for p in patterns]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=30,
                                          learning_rate=1e-3, per_device_train_batch_size=8, logging_steps=5,
                                          save_strategy="no", disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert losses[-1] < losses[0] - 0.4 and after < before - 0.5, (before, after, losses)


# -- a fresh process that never imported picolm -------------------------------------------------------------
def test_a_saved_folder_loads_with_trust_remote_code_without_importing_picolm(tmp_path):
    network = network_with(attention="linear", position="rope", chunk_size=8)
    PicolmForCausalLM.from_model(network).save_pretrained(tmp_path / "model")
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": network(ids)}, tmp_path / "expected.pt")
    script = f"""
import json, sys, torch
from transformers import AutoModelForCausalLM
assert not any(name.startswith("picolm") for name in sys.modules)
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
expected = torch.load({str(tmp_path / "expected.pt")!r})
with torch.no_grad():
    diff = (model(expected["ids"]).logits - expected["logits"]).abs().max().item()
print(json.dumps({{"class": type(model).__module__ + "." + type(model).__name__, "diff": diff,
                  "picolm": sys.modules["picolm"].__file__}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["class"] == "picolm.interop.picolm_transformers.PicolmForCausalLM"
    assert Path(result["picolm"]).resolve().is_relative_to(ROOT) and result["diff"] <= 1e-6


def test_folders_exported_before_the_interop_folder_still_find_the_classes():
    from picolm.models.picolm_transformers import PicolmConfig as OldConfig, PicolmForCausalLM as OldModel

    assert OldModel is PicolmForCausalLM and OldConfig is PicolmConfig
