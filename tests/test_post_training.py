"""SFT and DPO: packed preference rows against separate forwards, response-only masks, truncation, bad rows,
and the trainer running both objectives from a pretrained picolm run (metrics, monitor, exact resume)."""

import json

import numpy as np
import pytest
import torch

from picolm.cli import main
from picolm.config import ModelConfig, build_config
from picolm.data.examples import (PairExamples, SFTExamples, collate_pairs, collate_sft, encode_pairs, encode_sft,
                                  read_records)
from picolm.data.pack import prepare
from picolm.data.preparation import PrepareOptions
from picolm.data.records import BadRows
from picolm.errors import PicolmError
from picolm.models.gpt import GPT
from picolm.data.examples import IGNORE_INDEX
from picolm.checkpoint import load_checkpoint
from picolm.methods.sequences import sequence_log_probs
from picolm.train.trainer import Trainer
from test_trainer import interrupt_after, losses

TINY = {"train.batch_size": 8, "train.eval_every": 4, "train.eval_batches": 2, "train.log_every": 1,
        "train.warmup_steps": 1, "log.progress": False, "train.num_samples": 0, "train.device": "cpu"}


def row_log_probs(model, prompt, response):
    """Summed log-probabilities of `response` after `prompt`, from one plain forward pass."""
    ids = torch.tensor(np.concatenate([prompt, response]))[None]
    log_probs = torch.log_softmax(model(ids)[0].double(), -1)
    return sum(log_probs[len(prompt) - 1 + j, int(t)] for j, t in enumerate(response))


@pytest.mark.parametrize("position", ["learned", "rope", "none"])
def test_packed_pairs_give_the_log_probs_of_separate_forwards(position):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50, position=position)).double()
    rng = np.random.default_rng(0)
    draw = lambda low, high: [rng.integers(0, 50, rng.integers(low, high)) for _ in range(4)]  # noqa: E731
    pairs = PairExamples(draw(1, 9), draw(1, 12), draw(1, 12))
    chosen, rejected = sequence_log_probs(model, collate_pairs(pairs, [0, 1, 2, 3], pad_id=0))
    for i in range(4):
        assert chosen[i].item() == pytest.approx(row_log_probs(model, pairs.prompts[i], pairs.chosen[i]).item(), abs=1e-10)
        assert rejected[i].item() == pytest.approx(row_log_probs(model, pairs.prompts[i], pairs.rejected[i]).item(),
                                                   abs=1e-10)
    mean_chosen, _ = sequence_log_probs(model, collate_pairs(pairs, [0, 1, 2, 3], pad_id=0), length_normalize=True)
    assert torch.allclose(mean_chosen, chosen / torch.tensor([len(c) for c in pairs.chosen], dtype=chosen.dtype))


def test_sft_batches_train_on_the_response_only():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=30)).double()
    examples = SFTExamples([np.array([5, 6, 7]), np.array([8])], [np.array([9, 10, 0]), np.array([11, 12, 13, 0])])
    batch = collate_sft(examples, [0, 1], pad_id=0)
    assert batch["targets"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 9, 10, 0],
                                         [11, 12, 13, 0, IGNORE_INDEX]]
    loss, _, counted = model(batch["input_ids"], targets=batch["targets"])
    expected = -(row_log_probs(model, examples.prompts[0], examples.responses[0])
                 + row_log_probs(model, examples.prompts[1], examples.responses[1])) / 7
    assert int(counted) == 7 and loss.item() == pytest.approx(expected.item(), abs=1e-10)


class Chars:
    """A character tokenizer over printable ASCII; EOS is 0."""

    eos_id, vocab_size = 0, 128

    def encode_batch(self, texts):
        return [[ord(c) for c in text] for text in texts]


def test_sft_truncation_keeps_the_response_and_cuts_the_prompt_from_the_left():
    examples = encode_sft([{"prompt": "abcdefgh", "response": "xyz"}], Chars(), block_size=6)
    assert examples.truncated == 1
    assert "".join(map(chr, examples.prompts[0])) == "gh" and examples.responses[0].tolist() == [32, 120, 121, 122, 0]
    assert "".join(map(chr, encode_sft([{"prompt": "a\n", "response": "b"}], Chars(), 8).responses[0][:-1])) == "b"


def test_a_prompt_longer_than_the_context_is_a_bad_row(tmp_path):
    records = [{"prompt": "p" * 20, "chosen": "a", "rejected": "b", "line": 3},
               {"prompt": "ok", "chosen": "a", "rejected": "b", "line": 4}]
    with pytest.raises(PicolmError, match=r"x.jsonl:3: prompt: the prompt has 20 tokens.*--skip-bad-rows"):
        encode_pairs(records, Chars(), 16, BadRows(), path=tmp_path / "x.jsonl")
    bad = BadRows(skip=True)
    kept = encode_pairs(records, Chars(), 16, bad, path=tmp_path / "x.jsonl")
    assert len(kept) == 1 and len(bad.skipped) == 1


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "p", "chosen": " ", "rejected": "b"}, r"train.jsonl:2: chosen: empty chosen response"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, r"train.jsonl:2: rejected: chosen and rejected are identical"),
    ({"question": "p", "answer": "b"}, r"train.jsonl:2: unknown field layout for a preference row"),
    ({"input": "p", "chosen": "a"}, r"train.jsonl:2: unknown field layout"),
])
def test_bad_preference_rows_name_the_file_and_line(tmp_path, row, message):
    path = tmp_path / "train.jsonl"
    good = {"input": "a prompt", "chosen": "yes", "rejected": "no"}  # `input` is read as the prompt
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(PicolmError, match=message):
        read_records(path, "dpo", BadRows())
    records = read_records(path, "dpo", BadRows(skip=True))
    assert [r["prompt"] for r in records] == ["a prompt"]


# ---------------------------------------------------------------- the trainer with SFT and DPO


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Story text, a tiny base model trained on it for a few steps, and small horror SFT/DPO data directories."""
    root = tmp_path_factory.mktemp("post")
    quiet = lambda *a: None  # noqa: E731
    prepare(PrepareOptions(source="stories", out=str(root / "stories"), num_sequences=300, vocab_size=512), log=quiet)
    prepare(PrepareOptions(source="horror-sft", out=str(root / "sft-data"), num_sequences=80), log=quiet)
    prepare(PrepareOptions(source="horror-dpo", out=str(root / "dpo-data"), num_sequences=80), log=quiet)
    config = build_config(None, {**TINY, "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32,
                                 "model.block_size": 256, "train.max_steps": 3, "data.path": str(root / "stories")})
    Trainer(config, root / "base", log=quiet).fit()
    return root


def post_trainer(pipeline, run_dir, data, init_from, resume=False, **overrides):
    config = build_config(None, {**TINY, "data.path": str(pipeline / data), "train.init_from": str(init_from),
                                 "train.lr": 1e-3, **overrides})
    return Trainer(config, run_dir, resume=resume, log=lambda *a: None)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_prepared_horror_data_is_jsonl_in_the_documented_schema(pipeline):
    sft = json.loads((pipeline / "sft-data" / "train.jsonl").read_text().splitlines()[0])
    dpo = json.loads((pipeline / "dpo-data" / "test.jsonl").read_text().splitlines()[0])
    assert set(sft) == {"id", "prompt", "input", "response"} and set(dpo) == {"id", "prompt", "input", "chosen",
                                                                          "rejected"}
    assert sft["prompt"].startswith("Write a short horror story") and sft["prompt"].endswith("Story:")
    assert json.loads((pipeline / "dpo-data" / "meta.json").read_text())["task"] == "dpo"


def test_sft_starts_from_the_base_model_and_learns_the_responses(pipeline, tmp_path):
    trainer = post_trainer(pipeline, tmp_path / "sft", "sft-data", pipeline / "base", **{
        "train.max_steps": 12, "objective.monitor": str(pipeline / "dpo-data")})
    base = load_checkpoint(pipeline / "base" / "checkpoints" / "last.pt")["model_state_dict"]
    assert all(torch.equal(base[k], v.cpu()) for k, v in trainer.model.state_dict().items())
    assert trainer.config.model.n_embd == 32 and trainer.config.model.block_size == 256  # the base's model
    trainer.fit()
    history = rows(tmp_path / "sft")
    val = [r for r in history if "val/loss" in r]
    assert val[-1]["val/loss"] < val[0]["val/loss"]
    assert {"val/perplexity", "val/accuracy", "monitor/logps/chosen", "monitor/logps/rejected"} <= set(val[-1])
    assert (tmp_path / "sft" / "tokenizer").is_dir()


def test_dpo_metrics_and_an_exact_resume(pipeline, tmp_path):
    settings = {"train.max_steps": 8, "train.early_stop_metric": "val/rewards/accuracies", "model.dropout": 0.0}
    post_trainer(pipeline, tmp_path / "whole", "dpo-data", pipeline / "base", **settings).fit()
    first = post_trainer(pipeline, tmp_path / "split", "dpo-data", pipeline / "base", **settings)
    interrupt_after(first, 3)
    assert first.fit().stop_reason == "interrupted"
    post_trainer(pipeline, tmp_path / "split", "dpo-data", pipeline / "base", resume=True, **settings).fit()
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")  # the reference comes back from the checkpoint
    last = rows(tmp_path / "whole")
    train_row = next(r for r in last if "rewards/chosen" in r)
    assert {"rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"} <= set(train_row)
    first_loss = next(r["train/loss"] for r in last if "train/loss" in r)
    assert first_loss == pytest.approx(np.log(2), abs=1e-5)  # the policy starts as the reference: zero margins
    val = [r for r in last if "val/rewards/accuracies" in r]
    assert val[-1]["val/rewards/margins"] > 0


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge"])
def test_a_live_reference_trains_exactly_as_a_precomputed_one(pipeline, tmp_path, loss):
    settings = {"train.max_steps": 3, "objective.loss": loss}
    post_trainer(pipeline, tmp_path / "pre", "dpo-data", pipeline / "base", **settings).fit()
    post_trainer(pipeline, tmp_path / "live", "dpo-data", pipeline / "base", **settings,
                 **{"objective.reference": "live"}).fit()
    pre, live = losses(tmp_path / "pre")[0], losses(tmp_path / "live")[0]
    assert [s for s, _ in pre] == [s for s, _ in live]
    assert np.allclose([v for _, v in pre], [v for _, v in live], atol=1e-5)


def test_sft_data_with_a_dpo_objective_is_refused(pipeline, tmp_path):
    with pytest.raises(PicolmError, match="objective.kind: dpo training needs dpo data"):
        post_trainer(pipeline, tmp_path / "x", "sft-data", pipeline / "base", **{"objective.kind": "dpo"})


def test_cli_bad_rows_stop_before_training_unless_skipped(pipeline, tmp_path, capsys):
    data = tmp_path / "pairs"
    data.mkdir()
    good = {"prompt": "Once", "chosen": "upon a time", "rejected": "there was"}
    lines = [good, {**good, "rejected": good["chosen"]}, good, {**good, "chosen": ""}]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in lines * 3), encoding="utf-8")
    assert main(["prepare", "--source", str(source), "--out", str(data)]) == 2
    assert "pairs.jsonl:2: rejected: chosen and rejected are identical" in capsys.readouterr().err
    assert main(["prepare", "--source", str(source), "--out", str(data), "--skip-bad-rows",
                 "--split-ratios", "0.34,0.33,0.33"]) == 0
    assert "skipped 6 bad row(s)" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--init-from", str(pipeline / "base"), "--out", str(tmp_path / "run"),
                 "--train.max_steps", "2", "--train.batch_size", "2", "--log.progress", "false",
                 "--train.num_samples", "1", "--train.sample_tokens", "4"]) == 0
    assert (tmp_path / "run" / "samples.txt").read_text().startswith("[prompt] Once")


def test_eval_scores_preference_pairs_with_and_without_a_reference(pipeline, tmp_path):
    from picolm.data.examples import load_examples
    from picolm.loading import load_model

    base = load_model(pipeline / "base")
    pairs = load_examples(pipeline / "dpo-data", "test", "dpo", base.tokenizer, 256, BadRows(skip=True))
    with torch.no_grad():
        margins = [float(row_log_probs(base.model, p, c) - row_log_probs(base.model, p, r))
                   for p, c, r in zip(pairs.prompts, pairs.chosen, pairs.rejected)]
    out = tmp_path / "alone.json"
    assert main(["eval", str(pipeline / "base"), "--metrics", "preference", "--pairs", str(pipeline / "dpo-data"),
                 "--json", str(out)]) == 0
    alone = json.loads(out.read_text())
    assert alone["preference/reference"].startswith("none") and alone["preference/pairs"] == len(pairs)
    assert alone["preference/accuracy"] == pytest.approx(float(np.mean([m > 0 for m in margins])))
    # a margin is the difference of two sums of log-probabilities, which float32 rounds apart packed or one by one
    assert alone["preference/margin"] == pytest.approx(float(np.mean(margins)), rel=1e-4, abs=1e-4)
    assert main(["eval", str(pipeline / "base"), "--metrics", "preference", "--pairs", str(pipeline / "dpo-data"),
                 "--reference", str(pipeline / "base"), "--json", str(out)]) == 0
    against_itself = json.loads(out.read_text())
    assert (against_itself["preference/accuracy"], against_itself["preference/margin"]) == (0.0, 0.0)


def test_eval_checks_instruction_format_and_response_perplexity(pipeline, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", str(pipeline / "base"), "--data", str(pipeline / "sft-data"), "--metrics",
                 "perplexity,accuracy,format", "--samples", "4", "--max-new-tokens", "16", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["perplexity"] == pytest.approx(np.exp(result["loss"])) and 0 <= result["accuracy"] <= 1
    parts = [result[f"format/{name}"] for name in ("ended_with_eos", "non_empty", "no_template_leak")]
    assert all(0.0 <= p <= 1.0 for p in parts) and result["format/compliance"] <= min(parts)


def test_accumulated_sft_gradients_equal_the_whole_batch_gradient(pipeline, tmp_path):
    """Micro-batches hold different numbers of response tokens: each weighs by its tokens, not as a mean of means."""
    gradients, counts = [], []
    for micro in (8, 2):
        trainer = post_trainer(pipeline, tmp_path / str(micro), "sft-data", pipeline / "base",
                               **{"train.max_steps": 1, "train.micro_batch_size": micro})
        batches = [trainer.train_data.next_batch(micro) for _ in range(8 // micro)]
        counts.append([int((b["targets"] != -100).sum()) for b in batches])
        trainer.train_data.load_state_dict({"epoch": 0, "cursor": 0})
        step, _ = trainer.accumulate_gradients()
        assert step["loss"][1] == sum(counts[-1])
        gradients.append([p.grad.clone() for p in trainer.model.parameters()])
    assert len(set(counts[1])) > 1  # the test means something only when the micro-batches differ
    for whole, accumulated in zip(*gradients):
        torch.testing.assert_close(accumulated, whole, atol=1e-6, rtol=1e-5)
