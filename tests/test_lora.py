"""LoRA through peft: a tiny Hugging Face GPT-2 and a picolm GPT fine-tuned with adapters only (SFT, DPO, next-token),
checked against the base weights, the merged export transformers loads, an exact resume, and one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from picolm.checkpoint import load_checkpoint
from picolm.cli import main
from picolm.config import LoraConfig, build_config
from picolm.data.examples import in_order
from picolm.interop.hf import hf_model_from_checkpoint, load_hf_model
from picolm.interop.lora import add_adapters
from picolm.loading import load_model
from picolm.methods.preference import adapter_layers
from picolm.methods.sequences import sequence_log_probs
from picolm.tokenizer import EOS, train_bpe
from picolm.train.trainer import Trainer
from test_trainer import interrupt_after, losses

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song", "tiny models learn fast",
         "rain fell on the town", "an owl woke at night"]
QUIET = ["--log.progress", "false", "--train.num_samples", "0", "--train.device", "cpu"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, hf_offline):
    """A tiny random GPT-2 written by save_pretrained, with a byte-level BPE as its tokenizer.json; wide enough (128)
    that rank-4 adapters are a small share of it."""
    tok = train_bpe(WORDS * 4, vocab_size=280)
    folder = tmp_path_factory.mktemp("gpt2")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.tok, eos_token=EOS).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=300, n_positions=64,
                                     bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def prepared(tmp_path_factory, name: str, rows: list[dict]):
    source = tmp_path_factory.mktemp(name) / f"{name}.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert main(["prepare", "--source", str(source), "--out", str(source.parent / "data")]) == 0
    return source.parent / "data"


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    return prepared(tmp_path_factory, "sft", [{"prompt": f"Say {i}:", "response": WORDS[i % len(WORDS)]}
                                              for i in range(48)])


@pytest.fixture(scope="module")
def dpo_data(tmp_path_factory):
    return prepared(tmp_path_factory, "dpo", [{"prompt": f"Pick {i}:", "chosen": WORDS[i % len(WORDS)],
                                               "rejected": WORDS[(i + 1) % len(WORDS)]} for i in range(48)])


def train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--train.batch_size", "8", "--train.eval_every", "4",
            "--train.eval_batches", "1", "--train.warmup_steps", "0", *QUIET, *extra]


def adapted_model(run_dir):
    """The run's last checkpoint as it trained: the network, its adapters unmerged, its weights."""
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    model = hf_model_from_checkpoint(state["model_config"])
    add_adapters(model, LoraConfig(**state["train_config"]["lora"]))
    model.load_state_dict(state["model_state_dict"])
    return model.eval(), state


def test_lora_sft_trains_a_small_share_and_its_merged_export_gives_the_adapted_logits(gpt2, sft_data, tmp_path,
                                                                                      capsys):
    run, exported = tmp_path / "run", tmp_path / "export"
    assert main(train_args(sft_data, run, "--hf-model", str(gpt2), "--train.max_steps", "6", "--train.lr", "1e-2",
                           "--lora.rank", "4", "--lora.alpha", "8", "--lora.targets", "c_attn,c_proj,c_fc")) == 0
    log = capsys.readouterr().out
    assert "LoRA rank 4 (alpha 8) on 8 layers (c_attn, c_fc, c_proj)" in log

    model, state = adapted_model(run)
    base = transformers.GPT2LMHeadModel.from_pretrained(gpt2).eval()
    # only the adapters trained: every base weight is the folder's, and the optimizer holds moments for adapters alone
    weights = {name.replace(".base_layer", ""): t for name, t in state["model_state_dict"].items()
               if "lora_" not in name}
    assert all(torch.equal(weights[f"hf.{name}"], t) for name, t in base.state_dict().items())
    moments = sum(s["exp_avg"].numel() for s in state["optimizer_state_dict"][0]["state"].values())
    adapters = sum(t.numel() for name, t in state["model_state_dict"].items() if "lora_" in name)
    total = sum(p.numel() for p in model.parameters())
    assert moments == adapters and adapters / total < 0.05
    assert f"{adapters:,} of {total:,} parameters train ({100 * adapters / total:.2f}%)" in log

    assert main(["export", str(run), "--format", "hf", str(exported)]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    assert type(merged).__name__ == "GPT2LMHeadModel" and not any("lora" in n for n in merged.state_dict())
    ids = torch.randint(0, 280, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted, plain, original = model(ids), merged(ids).logits, base(ids).logits
    assert (adapted - original).abs().max() > 1e-3  # the adapters moved: merging them is not a no-op
    assert (adapted - plain).abs().max() <= 1e-5


def dpo_trainer(gpt2, data, run_dir, reference, steps=4):
    config = build_config(None, {"data.path": str(data), "train.hf_model": str(gpt2), "train.batch_size": 8,
                                 "train.max_steps": steps, "train.eval_every": steps, "train.eval_batches": 1,
                                 "train.lr": 1e-2, "train.warmup_steps": 0, "train.num_samples": 0,
                                 "train.device": "cpu", "log.progress": False, "objective.reference": reference,
                                 "lora.rank": 4, "lora.dropout": 0.1})
    return Trainer(config, run_dir, log=lambda *a: None)


def test_lora_dpo_takes_the_base_model_as_its_reference(gpt2, dpo_data, tmp_path):
    """The reference is the policy with its adapters off (no copy): the base model's log-probabilities, loaded
    separately, both precomputed and live after the adapters have moved; and both train alike."""
    base, _ = load_hf_model(str(gpt2))
    pre = dpo_trainer(gpt2, dpo_data, tmp_path / "pre", "precomputed")
    pre.fit()
    live = dpo_trainer(gpt2, dpo_data, tmp_path / "live", "live")
    live.fit()
    assert live.objective.reference_model is live.model  # no second copy of the model

    pairs = pre.run.examples()["train"]
    batch = {k: v for k, v in next(in_order(pairs, 8, pre.tokenizer.eos_id)).items() if k != "reference"}
    with torch.no_grad():
        expected = torch.stack(sequence_log_probs(base.eval(), batch), dim=1)
        policy = torch.stack(sequence_log_probs(live.model.eval(), batch), dim=1)
    torch.testing.assert_close(pairs.reference[:8], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.stack(live.objective.reference_log_probs(batch), dim=1), expected, atol=1e-4,
                               rtol=0)
    assert (policy - expected).abs().max() > 1e-2  # the policy did move away from it
    layers = adapter_layers(live.model)
    assert len(layers) == 8 and not any(layer.disable_adapters for layer in layers)  # back on after each pass
    assert all(p.requires_grad == ("lora_" in n) for n, p in live.model.named_parameters())
    (pre_losses, _), (live_losses, _) = losses(tmp_path / "pre"), losses(tmp_path / "live")
    assert [s for s, _ in pre_losses] == [s for s, _ in live_losses]
    assert torch.allclose(torch.tensor([v for _, v in pre_losses]), torch.tensor([v for _, v in live_losses]),
                          atol=1e-5)


def test_lora_on_a_picolm_gpt_resumes_exactly_and_loads_merged(trained_run, numeric_data, tmp_path, capsys):
    def trainer(run_dir, resume=False):
        config = build_config(None, {"data.path": str(numeric_data), "train.init_from": str(trained_run),
                                     "train.batch_size": 8, "train.max_steps": 6, "train.eval_every": 3,
                                     "train.eval_batches": 1, "train.log_every": 1, "train.lr": 1e-2,
                                     "train.num_samples": 0, "train.device": "cpu", "log.progress": False,
                                     "lora.rank": 2, "lora.dropout": 0.1, "lora.targets": "qkv,fc"})
        return Trainer(config, run_dir, resume=resume, log=lambda *a: None)

    trainer(tmp_path / "whole").fit()
    first = trainer(tmp_path / "split")
    interrupt_after(first, 2)
    assert first.fit().stop_reason == "interrupted"
    trainer(tmp_path / "split", resume=True).fit()
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")  # bit for bit, adapter dropout included

    state = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    assert {n.rpartition(".lora_")[0].rpartition(".")[2] for n in state["model_state_dict"] if "lora_" in n} == \
        {"qkv", "fc"}
    adapted = trainer(tmp_path / "whole", resume=True).model.eval()  # the adapters back, unmerged
    loaded = load_model(tmp_path / "whole" / "checkpoints" / "last.pt").model
    assert not any("lora" in name for name in loaded.state_dict())
    ids = torch.randint(0, loaded.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (adapted(ids) - loaded(ids)).abs().max() <= 1e-5
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "whole"), "--prompt", "1 2 3", "--max-new-tokens", "4"]) == 0
    assert main(["eval", str(tmp_path / "whole"), "--metrics", "perplexity"]) == 0


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_lora_settings_are_refused_in_one_line(trained_run, numeric_data, tmp_path, capsys, monkeypatch):
    start = ["--init-from", str(trained_run), "--train.max_steps", "1"]
    assert "lora.rank: must be at least 0 (got -1)" in one_line_error(
        train_args(numeric_data, tmp_path / "a", *start, "--lora.rank", "-1"), capsys)
    assert "lora.targets: no linear layer named 'c_attn' in this model; it has qkv, proj, fc" in one_line_error(
        train_args(numeric_data, tmp_path / "b", *start, "--lora.rank", "2", "--lora.targets", "qkv,c_attn"), capsys)
    assert "lora.alpha: applies to LoRA runs only (set lora.rank)" in one_line_error(
        train_args(numeric_data, tmp_path / "c", *start, "--lora.alpha", "4"), capsys)
    assert "lora.rank: LoRA adapts a trained model's weights" in one_line_error(
        train_args(numeric_data, tmp_path / "d", "--lora.rank", "2", "--model.n_layer", "1"), capsys)
    assert not any((tmp_path / name).exists() for name in "abcd")

    assert main(train_args(numeric_data, tmp_path / "run", *start, "--lora.rank", "2")) == 0
    assert "lora.rank: cannot change it when resuming (the run has 2)" in one_line_error(
        ["train", "--resume", str(tmp_path / "run"), "--lora.rank", "4", "--train.max_steps", "2"], capsys)

    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    assert "lora.rank: LoRA needs the package peft: pip install 'picolm[lora]'" in one_line_error(
        train_args(numeric_data, tmp_path / "e", *start, "--lora.rank", "2"), capsys)


def test_peft_is_imported_by_lora_runs_only():
    code = "import sys, picolm.train.setup, picolm.loading, picolm.methods.preference; print('peft' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_head_is_left_out_by_what_it_is_not_by_its_width():
    """An MLP as wide as the vocabulary (4 x 128 = 512 tokens) is adapted like any other layer; the head is not."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from picolm.config import ModelConfig
    from picolm.interop.hf import HFCausalLM
    from picolm.interop.lora import linear_layers
    from picolm.models.gpt import GPT

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=128, block_size=16, vocab_size=512))
    assert sorted(linear_layers(model)) == ["blocks.0.attn.proj", "blocks.0.attn.qkv", "blocks.0.mlp.fc",
                                            "blocks.0.mlp.proj"]
    hf = HFCausalLM(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=128, n_positions=16, vocab_size=512)))
    assert sorted(name.rpartition(".")[2] for name in linear_layers(hf)) == ["c_attn", "c_fc", "c_proj", "c_proj"]
