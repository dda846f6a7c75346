"""`picolm eval` with every metric, the reference-free generation metrics, and `picolm compare`."""

import json
import math

import pytest

from picolm.cli import main
from picolm.eval.quality import distinct_n, self_bleu, sentence_bleu


def test_bleu_follows_its_definition():
    hypothesis, reference = "the cat sat on the mat".split(), "the cat is on the mat".split()
    # clipped precisions 5/6, 3/5, 1/4, 0/3; add-one smoothing from bigrams on; equal lengths: no brevity penalty
    expected = math.exp((math.log(5 / 6) + math.log(4 / 6) + math.log(2 / 5) + math.log(1 / 4)) / 4)
    assert sentence_bleu(hypothesis, [reference]) == pytest.approx(expected)
    assert sentence_bleu(reference, [reference]) == pytest.approx(1.0)
    assert sentence_bleu("a b c d".split(), ["w x y z".split()]) == 0.0
    short = sentence_bleu("the cat".split(), [reference])
    assert short == pytest.approx(math.exp(1 - 6 / 2) * math.exp((0 + math.log(2 / 2) + 0 + 0) / 4))


def test_self_bleu_and_distinct_n_measure_repetition():
    same = ["the dark house was cold and quiet"] * 4
    varied = ["the dark house was cold", "a bright morning came early", "birds sang over green hills",
              "nobody ever saw them again"]
    assert self_bleu(same) == pytest.approx(1.0) and self_bleu(varied) < 0.05
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4) and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(same, 2) == pytest.approx(6 / 24) and distinct_n(varied, 1) > 0.9


def test_eval_reports_every_metric_for_a_numeric_run(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained_run), "--metrics", "perplexity,accuracy,kinds,length,generation,speed",
                 "--samples", "4", "--max-new-tokens", "8", "--max-windows", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    for kind in ("counting", "arithmetic", "geometric", "alternating", "random_walk"):
        assert 0.0 <= result[f"accuracy/{kind}"] <= 1.0
    assert result["length/sequence_lengths"] == "17-32" and 0.0 <= result["length/accuracy"] <= 1.0
    assert result["generation/samples"] == 4 and 0.0 <= result["generation/self_bleu"] <= 1.0
    assert 0.0 < result["generation/distinct_1"] <= 1.0
    assert result["speed/tokens_per_second_batch_1"] > 0 and result["speed/tokens_per_second_batch_8"] > 0
    table = capsys.readouterr().out
    assert "length/accuracy" in table and "speed/tokens_per_second_batch_8" in table


def test_response_metrics_read_any_data_and_the_help_shows_each_metric_with_an_example(trained_run, tmp_path,
                                                                                          capsys):
    from picolm.eval.suite import METRICS

    out = tmp_path / "responses.json"
    assert main(["eval", str(trained_run), "--metrics", "lexicon,samples", "--samples", "3", "--max-new-tokens", "6",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["samples"]) == 3 and all(s["reference"] is None for s in result["samples"])  # text: openings
    assert (result["lexicon/name"], result["lexicon/rate"], result["lexicon/samples"]) == ("horror", 0.0, 3)
    printed = capsys.readouterr().out
    assert f"[prompt] {result['samples'][0]['prompt']}\n[response] {result['samples'][0]['response']}" in printed
    assert main(["eval", "--help"]) == 0
    examples, heading = {}, None  # each metric's heading line (two spaces in), then its example
    for line in capsys.readouterr().out.split("positional arguments")[0].splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            heading = line.split("  ")[1]
        elif line.strip().startswith("picolm eval ") and heading:
            examples[heading] = line.strip()
    assert {name for heading in examples for name in heading.split(", ")} == set(METRICS)
    assert examples["instruct"].startswith("picolm eval runs/sft --metrics instruct --data ")


@pytest.mark.parametrize("args, message", [
    (["--metrics", "perplexity,bleu"], "--metrics: unknown metric 'bleu'"),
    (["--metrics", "preference"], "pass --pairs"),
    (["--metrics", "format"], "pass --instructions"),
    (["--metrics", "generation", "--samples", "1"], "--samples: needs at least 2 samples"),
    (["--metrics", "generation", "--max-new-tokens", "0"], "--max-new-tokens: must be at least 1"),
])
def test_eval_rejects_what_it_cannot_do(trained_run, args, message, capsys):
    assert main(["eval", str(trained_run), *args]) == 2
    assert message in capsys.readouterr().err


def test_compare_writes_one_table_and_one_plot(trained_run, numeric_data, tmp_path, capsys):
    from conftest import TINY

    other = tmp_path / "longer"
    assert main(["train", "--data", str(numeric_data), "--out", str(other), "--train.max_steps", "30", *TINY]) == 0
    assert main(["compare", str(trained_run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    report = (tmp_path / "cmp" / "compare.md").read_text()
    header, _, first, second = report.split("\n\n")[1].splitlines()
    assert "val/loss" in header and "best val/loss" in header
    assert first.startswith("| numeric | train.max_steps=20 | 20 |")  # the settings that set the runs apart
    assert second.startswith("| longer | train.max_steps=30 | 30 |")
    assert first in table and (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    assert main(["compare", str(trained_run), str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_per_kind_loss_is_the_mean_over_that_kinds_numbers(numeric_data):
    """An independent count: every window's per-token cross-entropy, grouped by the target's kind."""
    import numpy as np
    import torch

    from picolm.config import ModelConfig
    from picolm.data.loader import eval_windows, window_batches
    from picolm.data.tokens import load_meta, load_split
    from picolm.methods.next_token import evaluate_tokens
    from picolm.models.gpt import GPT
    from picolm.tokenizer import load_tokenizer

    meta = load_meta(numeric_data)
    tokens, kinds = load_split(numeric_data, "val", load_tokenizer(numeric_data / "tokenizer"))
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=meta["vocab_size"])).eval()
    result = evaluate_tokens(model, window_batches(tokens, 16, 4, 12, kinds, meta["eos_id"]), meta["kinds"])
    sums, counts = {}, {}
    for start in eval_windows(tokens, 16, 12):
        window = torch.from_numpy(np.asarray(tokens[start:start + 17], dtype=np.int64))
        with torch.no_grad():
            logits = model(window[None, :-1])[0].double()
            losses = torch.nn.functional.cross_entropy(logits, window[1:], reduction="none")
        for offset, loss in enumerate(losses.tolist()):
            if int(window[offset + 1]) != meta["eos_id"]:
                name = meta["kinds"][int(kinds[start + offset + 1])]
                sums[name] = sums.get(name, 0.0) + loss
                counts[name] = counts.get(name, 0) + 1
    assert sums
    for name in sums:
        assert result[f"loss/{name}"] == pytest.approx(sums[name] / counts[name], rel=1e-5)
