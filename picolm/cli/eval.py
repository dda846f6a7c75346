"""`picolm eval`: any selection of metrics for a run or checkpoint (picolm/eval/suite.py)."""

from __future__ import annotations

import json
from pathlib import Path

from picolm.cli.common import (Formatter, add_dtype_option, add_sampling_options, count, device, output_file,
                               sampling_options)

DESCRIPTION = """\
Any checkpoint, its architecture read from it. Metrics (--metrics, comma-separated; a model's family says which it
can give), each with an example:

  perplexity, accuracy  on a split (response tokens for SFT data)
                          picolm eval runs/x --split val
  kinds                 per-kind accuracy of numeric data
                          picolm eval runs/numeric --metrics kinds
  length                numeric sequences longer than any in training
                          picolm eval runs/numeric --metrics length
  preference            on the pairs of --pairs: implicit-reward accuracy and margin against --reference (default:
                        the run's --init-from), beside the reference-free summed-log-prob accuracy (logps_accuracy)
                        and the per-token "chosen more likely"
                          picolm eval runs/dpo --metrics preference --pairs data/horror-dpo --reference runs/sft
  generation            Self-BLEU and distinct-1/2 of --samples sampled continuations (temperature 0.8 unless given)
                          picolm eval runs/x --metrics generation --samples 64
  instruct              ROUGE-L F1 (rouge_score, 0 to 1) and corpus chrF (sacrebleu, 0 to 100) of responses to
                        held-out instructions against their references, and their format compliance
                          picolm eval runs/sft --metrics instruct --data data/horror-sft --samples 50
  format                instruction-format compliance: responses that end with EOS, are not empty and repeat no
                        template header
                          picolm eval runs/sft --metrics format --instructions data/horror-sft
  lexicon               the share of the responses' words in a lexicon (averaged over responses): the built-in
                        horror words, or --lexicon FILE (one word per line, # comments)
                          picolm eval runs/dpo --metrics lexicon --lexicon words.txt
  samples               the responses, each with its prompt and reference, in the --json output (and printed)
                          picolm eval runs/sft --metrics instruct,samples --json out/sft.json
  speed                 greedy tokens/s at batch 1 and 8 (a diffusion model's at --steps)
                          picolm eval runs/x --metrics speed

instruct, format, lexicon and samples share one set of responses to the first --samples prompts of the --split of
the instruction data (--instructions, else --data, else the run's data: an SFT folder's instructions, a DPO folder's
prompts, a text folder's document openings), greedy unless --temperature is given, at most --max-new-tokens each;
the same --seed writes the same responses."""


def register(verbs) -> None:
    p = verbs.add_parser("eval", formatter_class=Formatter, help="evaluate a run or checkpoint",
                         description=DESCRIPTION)
    p.add_argument("target", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("--metrics", default="perplexity,accuracy", help="comma-separated metric names")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data", default=None, help="data directory (default: the one the run trained on)")
    p.add_argument("--pairs", default=None, help="preference: a DPO data directory (default: --data)")
    p.add_argument("--reference", default=None,
                   help="preference: the reference run or checkpoint (default: the run's --init-from)")
    p.add_argument("--instructions", default=None, help="instruct/format: an SFT data directory (default: --data)")
    p.add_argument("--lexicon", default=None, metavar="FILE",
                   help="lexicon: a word list, one word per line, # comments (default: the built-in horror words)")
    p.add_argument("--samples", type=count(2, 100_000, "samples"), default=32,
                   help="generation, instruct, format, lexicon, samples: how many prompts to generate for")
    add_sampling_options(p, max_new_tokens=64)
    p.set_defaults(temperature=None)  # each metric's own: greedy responses, sampled `generation` (the description)
    p.add_argument("--json", dest="json_out", type=output_file, default=None,
                   help="also write the metrics as JSON to this file")
    p.add_argument("--batch-size", type=count(1, 65536), default=16, help="windows (or examples) per forward pass")
    p.add_argument("--max-windows", type=count(1), default=None,
                   help="evaluate at most N windows, evenly spread (default: all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    add_dtype_option(p)
    p.set_defaults(run=run)


def format_metrics(metrics: dict) -> str:
    """One line per metric; the samples, when asked for, after them as [prompt] / [reference] / [response] blocks."""
    samples = metrics.get("samples", [])
    metrics = {k: v for k, v in metrics.items() if k != "samples"}
    width = max(len(k) for k in metrics)
    lines = [f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in metrics.items()]
    for sample in samples:
        reference = [f"[reference] {sample['reference']}"] if sample["reference"] is not None else []
        lines += ["", f"[prompt] {sample['prompt']}", *reference, f"[response] {sample['response']}"]
    return "\n".join(lines)


def run(args) -> int:
    from picolm.eval.suite import EvalRequest, RunEvaluation
    from picolm.loading import load_model

    request = EvalRequest(metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()), split=args.split,
                          data=args.data, pairs=args.pairs, reference=args.reference,
                          instructions=args.instructions, lexicon=args.lexicon, samples=args.samples,
                          sampling=sampling_options(args), batch_size=args.batch_size, max_windows=args.max_windows)
    request.validate()
    where = device(args.device)
    result = RunEvaluation(load_model(args.target, device=where, dtype=args.dtype), request, where).run()
    print(format_metrics(result))
    if args.json_out:
        write_json(Path(args.json_out), result)
    return 0


def write_json(path: Path, metrics: dict) -> None:
    """The metrics as one JSON object (missing parent folders made, as for every output path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
