"""`picolm eval`: any selection of metrics for a run or checkpoint (picolm/eval/suite.py)."""

from __future__ import annotations

import json
from pathlib import Path

from picolm.cli.common import Formatter, add_sampling_options, count, device, output_file, sampling_options


def register(verbs) -> None:
    p = verbs.add_parser("eval", formatter_class=Formatter, help="evaluate a run or checkpoint",
                         description="Any checkpoint, its architecture read from it. Metrics (--metrics, comma-"
                                     "separated): perplexity, accuracy (on a split; response tokens for SFT data); "
                                     "kinds (per-kind numeric accuracy); length (numeric sequences longer than in "
                                     "training); preference (accuracy and reward margin on --pairs); generation "
                                     "(Self-BLEU, distinct-1/2 over --samples samples); format (instruction-format "
                                     "compliance on --instructions); speed (greedy tokens/s, batch 1 and 8; a "
                                     "diffusion model's at --steps). A model's family says which it can give.")
    p.add_argument("target", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("--metrics", default="perplexity,accuracy", help="comma-separated metric names")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data", default=None, help="data directory (default: the one the run trained on)")
    p.add_argument("--pairs", default=None, help="preference: a DPO data directory (default: --data)")
    p.add_argument("--reference", default=None,
                   help="preference: the reference run or checkpoint (default: the run's --init-from)")
    p.add_argument("--instructions", default=None, help="format: an SFT data directory (default: --data)")
    p.add_argument("--samples", type=count(2, 100_000, "samples"), default=32,
                   help="generation/format: how many prompts to generate for")
    add_sampling_options(p, max_new_tokens=64)
    p.add_argument("--json", dest="json_out", type=output_file, default=None,
                   help="also write the metrics as JSON to this file")
    p.add_argument("--batch-size", type=count(1, 65536), default=16, help="windows (or examples) per forward pass")
    p.add_argument("--max-windows", type=count(1), default=None,
                   help="evaluate at most N windows, evenly spread (default: all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.set_defaults(run=run)


def format_metrics(metrics: dict) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                     for k, v in metrics.items())


def run(args) -> int:
    from picolm.eval.suite import EvalRequest, RunEvaluation
    from picolm.loading import load_model

    request = EvalRequest(metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()), split=args.split,
                          data=args.data, pairs=args.pairs, reference=args.reference,
                          instructions=args.instructions, samples=args.samples, sampling=sampling_options(args),
                          batch_size=args.batch_size, max_windows=args.max_windows)
    request.validate()
    where = device(args.device)
    result = RunEvaluation(load_model(args.target, device=where), request, where).run()
    print(format_metrics(result))
    if args.json_out:
        write_json(Path(args.json_out), result)
    return 0


def write_json(path: Path, metrics: dict) -> None:
    """The metrics as one JSON object (missing parent folders made, as for every output path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
