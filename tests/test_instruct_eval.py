"""Responses to held-out instructions and what is scored on them, against independent oracles: rouge_score and
sacrebleu applied to the samples `picolm eval` records, hand-checked cases, the built-in lexicon rate, greedy text from
the generation path, transformers' log-probabilities of the exported models for the preference accuracies, and the
post-training report built on all of them."""

import json
import statistics
from pathlib import Path

import pytest
import torch

from picolm.cli import main
from picolm.config import SamplingOptions, build_config
from picolm.data import specs
from picolm.errors import PicolmError
from picolm.eval.instruct import Responses, format_scores, reference_scores
from picolm.eval.lexicon import HORROR, Lexicon, load_lexicon
from picolm.train.trainer import Trainer
from test_post_training import TINY, pipeline  # noqa: F401  (the fixture: tiny base model, SFT and DPO data)

SAMPLES = 4


@pytest.fixture(scope="module")
def sft_run(pipeline):  # noqa: F811
    """The base model after a few SFT steps: a policy that differs from its reference."""
    config = build_config(None, {**TINY, "data.path": str(pipeline / "sft-data"), "train.init_from":
                                 str(pipeline / "base"), "train.lr": 1e-3, "train.max_steps": 3})
    Trainer(config, pipeline / "sft", log=lambda *a: None).fit()
    return pipeline / "sft"


def test_reference_scores_of_hand_checked_cases():
    same = reference_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == {"rouge_l": pytest.approx(1.0), "chrf": pytest.approx(100.0)}
    assert reference_scores(["xyz qqq"], ["abc def"]) == {"rouge_l": 0.0, "chrf": 0.0}
    # longest common subsequence 3 of 3 and 6 words: precision 1, recall 1/2, F1 2/3; the mean over two responses
    assert reference_scores(["The cat sat.", "abc"], ["the cat sat on the mat", "xyz"])["rouge_l"] == \
        pytest.approx((2 / 3 + 0) / 2)


def test_format_compliance_needs_eos_text_and_no_template_header():
    responses = Responses(["p"] * 4, ["a story", "", "### Response: a story", "a story"], [True, True, True, False])
    assert format_scores(responses) == {"compliance": 0.25, "ended_with_eos": 0.75, "non_empty": 0.75,
                                        "no_template_leak": 0.75}


def test_lexicon_files_and_rates(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# my words\nGhost\n\nfog  # inline comment\n", encoding="utf-8")
    lexicon = load_lexicon(path)
    assert lexicon == Lexicon("words", frozenset({"ghost", "fog"}))
    assert lexicon.rate("A ghost, in the FOG!") == pytest.approx(2 / 5) and lexicon.rate(" ... ") == 0.0
    assert lexicon.mean_rate(["ghost", "a b c fog"]) == pytest.approx((1 + 1 / 4) / 2)
    tales = specs.generate_tales(20)
    assert [HORROR.rate(t) for t in tales] == [specs.horror_lexicon_rate(t) for t in tales]
    for text, words in (("# nothing\n\n", "has no words"), ("ghost\nblack cat\n", "one word per line")):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(PicolmError, match=words) as caught:
            load_lexicon(path)
        assert caught.value.path == path and caught.value.field == "--lexicon"
    assert caught.value.line == 2
    with pytest.raises(PicolmError, match="no such lexicon file"):
        load_lexicon(tmp_path / "none.txt")


def evaluate(run: Path, out: Path, *args: str) -> dict:
    assert main(["eval", str(run), "--samples", str(SAMPLES), "--max-new-tokens", "12", "--json", str(out),
                 *args]) == 0
    return json.loads(out.read_text())


def test_instruct_scores_are_the_libraries_scores_of_the_recorded_samples(pipeline, sft_run, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import CHRF

    from picolm.generate import TextGenerator
    from picolm.loading import load_model

    words = tmp_path / "words.txt"
    words.write_text("the\nstory  # two of the words the tiny model writes most\nand\n", encoding="utf-8")
    result = evaluate(sft_run, tmp_path / "a.json", "--metrics", "instruct,lexicon,samples", "--data",
                      str(pipeline / "sft-data"), "--lexicon", str(words))
    rows = [json.loads(line) for line in (pipeline / "sft-data" / "test.jsonl").read_text().splitlines()][:SAMPLES]
    samples = result["samples"]
    assert [s["prompt"] for s in samples] == [r["prompt"] for r in rows]
    assert [s["reference"] for s in samples] == [r["response"] for r in rows]
    responses, references = [s["response"] for s in samples], [s["reference"] for s in samples]
    scorer = RougeScorer(["rougeL"])
    rouge = statistics.mean(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(responses, references))
    assert result["instruct/samples"] == SAMPLES and result["instruct/rouge_l"] == pytest.approx(rouge, abs=1e-12)
    assert result["instruct/chrf"] == pytest.approx(CHRF().corpus_score(responses, [references]).score, abs=1e-9)
    assert 0 < result["instruct/rouge_l"] < 1 and 0 < result["instruct/chrf"] < 100
    assert 0.0 <= result["format/compliance"] <= min(result["format/ended_with_eos"], result["format/non_empty"])
    monkeypatch.setattr(specs, "HORROR_LEXICON", frozenset({"the", "story", "and"}))  # the built-in rate's counting
    assert result["lexicon/rate"] == pytest.approx(statistics.mean(map(specs.horror_lexicon_rate, responses)))
    assert result["lexicon/rate"] > 0 and (result["lexicon/name"], result["lexicon/words"]) == ("words", 3)

    loaded = load_model(sft_run)  # greedy by default: the generation path's greedy text
    greedy = TextGenerator(loaded.model, loaded.tokenizer).complete([r["prompt"] for r in rows],
                                                                    SamplingOptions(max_new_tokens=12, temperature=0))
    assert responses == greedy
    again = evaluate(sft_run, tmp_path / "b.json", "--metrics", "instruct,lexicon,samples", "--data",
                     str(pipeline / "sft-data"), "--lexicon", str(words))
    assert again == result
    sampled = [evaluate(sft_run, tmp_path / f"{seed}.json", "--metrics", "samples", "--data",
                        str(pipeline / "sft-data"), "--temperature", "1.5", "--seed", str(seed))["samples"]
               for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2] and sampled[0] != samples


def test_response_metrics_refuse_what_they_cannot_do(pipeline, tmp_path, capsys):  # noqa: F811
    base = str(pipeline / "base")
    cases = [(["--metrics", "instruct", "--data", str(pipeline / "dpo-data")], "`instruct` needs instruction data"),
             (["--metrics", "lexicon", "--lexicon", str(tmp_path / "none.txt")],
              f"{tmp_path / 'none.txt'}: --lexicon: no such lexicon file"),
             (["--lexicon", str(tmp_path / "none.txt")], "--lexicon: a word list is for --metrics lexicon")]
    for args, message in cases:
        assert main(["eval", base, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def transformers_log_probs(run: Path, pairs) -> torch.Tensor:
    """(N, 2) summed log-probabilities of chosen and rejected after the prompt, from the model exported to
    transformers' GPT-2, one pair at a time without padding."""
    from picolm.interop.convert import to_gpt2
    from picolm.loading import load_model

    hf = to_gpt2(load_model(run).model)
    rows = []
    with torch.no_grad():
        for prompt, *responses in zip(pairs.prompts, pairs.chosen, pairs.rejected):
            sums = []
            for response in responses:
                ids = torch.tensor([*prompt, *response])[None]
                log_probs = torch.log_softmax(hf(ids).logits[0].double(), -1)
                sums.append(sum(float(log_probs[len(prompt) - 1 + j, t]) for j, t in enumerate(response)))
            rows.append(sums)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture(scope="module")
def oracle(pipeline, sft_run):  # noqa: F811
    """The test pairs and transformers' summed log-probs of them under the base and the SFT model."""
    from picolm.data.examples import load_examples
    from picolm.data.records import BadRows
    from picolm.tokenizer import load_tokenizer

    pairs = load_examples(pipeline / "dpo-data", "test", "dpo", load_tokenizer(sft_run / "tokenizer"), 256,
                          BadRows(skip=True))
    lengths = torch.tensor([[len(c), len(r)] for c, r in zip(pairs.chosen, pairs.rejected)], dtype=torch.float64)
    return {"pairs": len(pairs), "lengths": lengths, "base": transformers_log_probs(pipeline / "base", pairs),
            "sft": transformers_log_probs(sft_run, pairs)}


def test_preference_accuracies_in_both_senses_match_transformers(pipeline, sft_run, oracle, tmp_path):  # noqa: F811
    result = evaluate(sft_run, tmp_path / "p.json", "--metrics", "preference", "--pairs", str(pipeline / "dpo-data"),
                      "--reference", str(pipeline / "base"))
    policy, reference = oracle["sft"], oracle["base"]
    per_token = policy / oracle["lengths"]
    margins = 0.1 * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1]))  # beta 0.1, summed
    assert result["preference/pairs"] == oracle["pairs"] > 4
    assert result["preference/logps_accuracy"] == float((policy[:, 0] > policy[:, 1]).double().mean())
    assert result["preference/chosen_more_likely"] == float((per_token[:, 0] > per_token[:, 1]).double().mean())
    assert result["preference/accuracy"] == float((margins > 0).double().mean())
    assert result["preference/margin"] == pytest.approx(float(margins.mean()), rel=1e-4, abs=1e-6)
    assert result["preference/accuracy"] != result["preference/logps_accuracy"]  # two senses, two numbers here


def test_post_training_report_compares_stages_on_whatever_data_is_given(pipeline, sft_run, oracle, tmp_path):  # noqa: F811
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import CHRF

    from picolm.eval.post_training import evaluate_stages, write_report

    stages = {"base": pipeline / "base", "sft": sft_run}
    results = evaluate_stages(stages, pipeline / "sft-data", pipeline / "dpo-data", references={"sft": "base"},
                              samples=2, device="cpu", max_new_tokens=8)
    base, sft = results["stages"]["base"], results["stages"]["sft"]
    margins = 0.1 * ((oracle["sft"][:, 0] - oracle["base"][:, 0]) - (oracle["sft"][:, 1] - oracle["base"][:, 1]))
    assert sft["preference_accuracy"] == float((margins > 0).double().mean()) and "preference_accuracy" not in base
    assert sft["reward_margin"] == pytest.approx(float(margins.mean()), rel=1e-4, abs=1e-6)
    for name, stage in results["stages"].items():
        logps = oracle[name]
        assert stage["logps_accuracy"] == float((logps[:, 0] > logps[:, 1]).double().mean())
        texts, references = stage["samples"], results["references"]
        scorer = RougeScorer(["rougeL"])
        assert stage["rouge_l"] == pytest.approx(statistics.mean(
            scorer.score(r, t)["rougeL"].fmeasure for t, r in zip(texts, references)), abs=1e-12)
        assert stage["chrf"] == pytest.approx(CHRF().corpus_score(texts, [references]).score, abs=1e-9)
        assert stage["lexicon_rate"] == pytest.approx(statistics.mean(map(specs.horror_lexicon_rate, texts)))
        assert {"sft_test_loss", "sft_test_perplexity", "chosen_more_likely", "format_compliance"} <= set(stage)
    training = {name: {"budget": "3 steps", "steps": 3, "minutes": 0.1} for name in stages}
    report = write_report(tmp_path, results, None, 1.0, training, title="tiny", description="Two models.\n")
    text = report.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model |")).split("|")
    assert text.startswith("# tiny\n\nTwo models. 1.0 minutes in all on this machine.")
    assert header[5].strip() == "preference accuracy" and header[6].strip() == "log-prob accuracy"
    assert "horror-lexicon rate" in header[-2] and "**reference**: " in text
    sft_row = next(line for line in text.splitlines() if line.startswith("| sft |")).split("|")
    assert float(sft_row[5]) == pytest.approx(sft["preference_accuracy"], abs=5e-4)

    pairs_only = evaluate_stages(stages, None, pipeline / "dpo-data", samples=2, device="cpu", max_new_tokens=8,
                                 lexicon=None)
    assert set(pairs_only["stages"]["sft"]) == {"checkpoint_step", "chosen_more_likely", "logps_accuracy", "samples"}
    assert pairs_only["stages"]["sft"]["logps_accuracy"] == sft["logps_accuracy"]
    text = write_report(tmp_path, pairs_only, None, 1.0, training).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model |")).split("|")[2:-1]
    assert [cell.strip() for cell in header] == ["chosen more likely", "log-prob accuracy"]  # none measured the rest
    row = next(line for line in text.splitlines() if line.startswith("| base |")).split("|")[2:-1]
    assert all(cell.strip() != "—" for cell in row)
    with pytest.raises(PicolmError, match="references: sft -> dpo"):
        evaluate_stages(stages, None, None, references={"sft": "dpo"})
