"""Instruction fine-tuning of the diffusion families: the prompt stays clean, only response positions are noised and
scored, the held-out response bound falls, and every verb conditions on the prompt."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from picolm.cli import main
from picolm.config import ModelConfig, ObjectiveConfig
from picolm.data.examples import SFTExamples, collate_canvas
from picolm.loading import load_model
from picolm.methods.mdlm import MaskedDiffusion, MDLMFamily
from picolm.methods.sdd import denoising_metrics, instruction_rows
from picolm.models.gpt import GPT
from picolm.models.sdd import SDD

EXAMPLES = SFTExamples(prompts=[np.array([1, 2, 3]), np.array([4])], responses=[np.array([5, 6, 0]), np.array([7, 0])])
BATCH = collate_canvas(EXAMPLES, [0, 1], pad_id=0)
RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_canvas_rows_mark_the_response_and_the_padding():
    assert BATCH["input_ids"].tolist() == [[1, 2, 3, 5, 6, 0], [4, 7, 0, 0, 0, 0]]
    assert BATCH["response"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert BATCH["real"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]


def mdlm(vocab_size=11) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=vocab_size, causal=False,
                           mask_id=vocab_size - 1))


def test_mdlm_masks_only_after_the_prompt_and_scores_the_padding_it_teaches(monkeypatch):
    model = mdlm()
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    monkeypatch.setattr("picolm.methods.mdlm.antithetic_times", lambda n, eps, device=None: torch.ones(n))
    loss, metrics = MaskedDiffusion(ObjectiveConfig(eps=1e-3)).loss(model, BATCH)
    (x_t, targets), kwargs = seen[0]
    prompt = ~BATCH["response"] & (BATCH["response"].cumsum(1) == 0)
    assert torch.equal(x_t[prompt], BATCH["input_ids"][prompt])  # the prompt stays clean
    assert bool((x_t[~prompt] == 10).all())  # at t = 1 the response and its EOS padding are all masked
    assert int(metrics["loss"][1]) == int((~prompt).sum()) == 8
    assert torch.equal(kwargs["predict_at"], (~prompt).flatten().nonzero().squeeze(1))


def test_the_mdlm_response_bound_ignores_the_padding():
    """Evaluation hides the padding from attention and scores the response alone: what fills the padding does not
    change the bound."""
    model = mdlm().eval()
    bounds = [MDLMFamily.score(model, [collate_canvas(EXAMPLES, [0, 1], pad_id=pad)], eps=1e-3)["loss"] for pad in (0, 8)]
    assert bounds[0] == pytest.approx(bounds[1], rel=1e-6)
    assert MDLMFamily.score(model, [BATCH], eps=1e-3)["tokens"] == 5  # the response tokens, EOS included


def test_sdd_keeps_the_prompt_clean_and_does_not_score_it():
    torch.manual_seed(0)
    model = SDD(ModelConfig(arch="sdd", causal=False, n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12,
                            ignore_id=11, sdd_k=3))
    x0, prompt = instruction_rows(BATCH, ignore_id=11, width=8)
    assert x0.tolist() == [[1, 2, 3, 5, 6, 0, 11, 11], [4, 7, 0, 11, 11, 11, 11, 11]]
    assert prompt.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args))
    metrics = denoising_metrics(model, x0, torch.ones(2), 3, torch.Generator().manual_seed(0), prompt)
    idx, probs = seen[0]
    assert torch.equal(idx[..., 0][prompt], x0[prompt]) and bool((probs[prompt][:, 0] == 1).all())
    assert int(metrics["loss"][1]) == 16 - 4 and int(metrics["accuracy"][1]) == 5 and int(metrics["ignore_acc"][1]) == 7


@pytest.fixture(scope="module")
def story_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct")
    assert main(["prepare", "--source", "stories", "--out", str(root / "stories"), "--num-sequences", "2000",
                 "--vocab-size", "1024"]) == 0
    assert main(["prepare", "--source", "horror-sft", "--out", str(root / "horror-sft"), "--num-sequences",
                 "600"]) == 0
    return root


SMALL = ["--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "64", "--model.block_size", "128",
         "--model.position", "rope", "--model.causal", "false", "--train.batch_size", "16", "--train.lr", "3e-3",
         "--train.eval_every", "50", "--train.eval_batches", "4", "--train.num_samples", "1",
         "--log.progress", "false"]


def response_bound(run, data, tmp_path) -> dict:
    out = tmp_path / f"{run.name}.json"
    assert main(["eval", str(run), "--data", str(data), "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("family", [["--objective.kind", "mdlm"], ["--model.arch", "sdd"]])
def test_instruction_fine_tuning_lowers_the_held_out_response_loss(family, story_data, tmp_path, capsys,
                                                                    monkeypatch):
    base, tuned, sft = tmp_path / "base", tmp_path / "tuned", story_data / "horror-sft"
    assert main(["train", "--data", str(story_data / "stories"), "--out", str(base), "--train.max_steps", "100",
                 *SMALL, *family]) == 0
    before = response_bound(base, sft, tmp_path)
    assert main(["train", str(RECIPES / "instruct-sft.yaml"), "--data", str(sft), "--init-from", str(base), "--out",
                 str(tuned), "--train.max_steps", "40", "--train.eval_every", "20", "--log.progress", "false"]) == 0
    after = response_bound(tuned, sft, tmp_path)
    assert after["loss"] < before["loss"] - 0.2, (before["loss"], after["loss"])
    assert "note" in after  # a bound (mdlm) or a denoising loss (sdd), and it says which

    loaded = load_model(tuned)
    kind = loaded.checkpoint["train_config"]["objective"]["kind"]
    assert kind == ("mdlm" if "mdlm" in family else "sdd") and loaded.checkpoint["task"] == "sft"
    prompt = "Write a short horror story that follows this story specification.\nTitle: The Door\nStory:"
    capsys.readouterr()
    assert main(["generate", str(tuned), "--prompt", prompt, "--max-new-tokens", "16", "--steps", "8"]) == 0
    assert capsys.readouterr().out.startswith(prompt)
    messages = iter(["Write a story about a door.", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(messages))
    assert main(["chat", str(tuned), "--chats-dir", str(tmp_path / "chats"), "--max-new-tokens", "8"]) == 0
    transcript = next((tmp_path / "chats").glob("*/transcript.txt")).read_text()
    assert '"template": "instruction"' in transcript and transcript.count("model> ") == 1  # a fine-tuned model
