"""`picolm <verb>`: the command line. Bad input exits with status 2 and one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from picolm.errors import PicolmError

VERBS_HELP = ("prepare data, train (pretrain, SFT, DPO), evaluate, compare, analyze, generate, chat, serve, export to "
              "Hugging Face, or run the quickstart")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _settings_help() -> str:
    """Every `--section.field` setting with its default, for `picolm train --help`."""
    import dataclasses
    import textwrap

    from picolm.config import PRESETS, SECTIONS

    lines = ["settings (--section.field VALUE, or in a recipe; default shown):"]
    for section, cls in SECTIONS.items():
        fields = " ".join(f"{f.name}={f.default_factory() if callable(f.default_factory) else f.default}"
                          for f in dataclasses.fields(cls))
        lines += textwrap.wrap(f"{section}: {fields}", 100, initial_indent="  ", subsequent_indent="    ")
    lines += textwrap.wrap(f"model.preset: {', '.join(PRESETS)} (expanded first; explicit fields win)", 100,
                           initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def add_sampling_options(p: argparse.ArgumentParser, max_new_tokens: int = 100) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.8, help="0 decodes greedily")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set reaching probability p")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="diffusion models: denoising steps (default: one per new token)")
    p.add_argument("--remasking", default="none", choices=["none", "low_confidence"],
                   help="diffusion models: reveal masked tokens at random (none) or the most confident first")
    p.add_argument("--block-length", type=int, default=None,
                   help="diffusion models: denoise blocks of this many tokens left to right (semi-autoregressive)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="picolm", formatter_class=Formatter,
                                     description="picolm: a small-language-model lab. Tokenize, pretrain, "
                                                 "fine-tune (SFT, DPO), evaluate and sample small language models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", help=VERBS_HELP)

    p = verbs.add_parser("prepare", formatter_class=Formatter, help="build a data directory (tokens + tokenizer)",
                         description="Read a source, train or load a tokenizer, and write train/val/test token "
                                     "files, meta.json and tokenizer/ into --out.")
    p.add_argument("--source", required=True,
                   help="built-in: numeric | stories | horror-sft | horror-dpo; hub: tinystories | wikitext-103 | "
                        "openwebtext | fineweb | alpaca | dolly | rm-static | hh-rlhf; pairs:SOURCE (preference "
                        "pairs from a text source); or PATH.txt | PATH.jsonl[:field] | PATH.json | "
                        "PATH.parquet[:field] (JSON rows may hold instruction/input/output, prompt/response, "
                        "prompt/chosen/rejected or chat messages)")
    p.add_argument("--out", required=True, help="data directory to write")
    p.add_argument("--tokenizer", default=None,
                   help="bpe (a byte-level BPE trained here) | gpt2 | numeric | char | hf:NAME_OR_PATH (a Hugging "
                        "Face tokenizer.json, its folder, or a hub name); default: numeric for --source numeric, "
                        "else bpe")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="BPE vocabulary size (default: 32768 for openwebtext and fineweb, else 4096)")
    p.add_argument("--limit", type=int, default=None, help="use at most N documents (per split for hub sources)")
    p.add_argument("--subset-ratio", type=float, default=None, help="use this fraction of the documents")
    p.add_argument("--split-ratios", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--ignore-source-splits", action="store_true",
                   help="re-split by --split-ratios even when the source has its own splits")
    p.add_argument("--seed", type=int, default=0, help="seed for generation and splitting")
    p.add_argument("--num-sequences", type=int, default=None,
                   help="built-in sources: how many sequences or stories (default 100000 numeric, 13000 stories)")
    p.add_argument("--min-length", type=int, default=None, help="numeric: shortest sequence (default 8)")
    p.add_argument("--max-length", type=int, default=None, help="numeric: longest sequence (default 16)")
    p.add_argument("--max-value", type=int, default=None, help="numeric: largest value (default 99)")
    p.add_argument("--hub-dir", default=None,
                   help="hub sources: load this local copy (same files and schema) instead of the hub")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="SFT/DPO rows that cannot be used are reported and skipped instead of stopping")
    streamed = p.add_argument_group(
        "streaming (corpora larger than memory)",
        "The web sources, and with --stream large .txt/.jsonl/.parquet files, are read as a stream in flat\n"
        "memory: val and test are held out by a hash of each document (--split-ratios), the BPE learns from a\n"
        "sample, documents are encoded in parallel, and the train tokens go to shards train-00000.bin, ...\n"
        "listed in meta.json (val.bin and test.bin stay single files).")
    streamed.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                          help="stream the source (default: on for openwebtext and fineweb, off otherwise)")
    streamed.add_argument("--shard-tokens", type=int, default=100_000_000,
                          help="tokens per train shard (200 MB as uint16)")
    streamed.add_argument("--tokenizer-sample-mb", type=float, default=64.0,
                          help="the BPE learns from the first this many MB of train documents")
    streamed.add_argument("--workers", type=int, default=None,
                          help="encoding processes, each with the tokenizer (default: one per core); 0 encodes in "
                               "the main process on the tokenizer's threads (slower, about 160 MB less memory)")

    p = verbs.add_parser("train", formatter_class=Formatter, help="train a model into a run directory",
                         description="Train from defaults, a YAML recipe and dotted overrides, e.g.\n"
                                     "  picolm train recipes/stories-tiny.yaml --data data/stories --out runs/a "
                                     "--model.n_layer 4 --train.lr 1e-3\n"
                                     "Any field of the model, data, train, objective and log sections can be set as "
                                     "--section.field VALUE; the list is below.",
                         epilog=_settings_help())
    p.add_argument("recipe", nargs="?", help="YAML recipe (sections model, data, train, objective, log)")
    p.add_argument("--data", help="data directory from `picolm prepare` (same as --data.path)")
    p.add_argument("--out", help="run directory (default runs/<data>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--init-from", metavar="RUN_DIR", help="start from this picolm run or checkpoint, or a GPT-2 in "
                                                           "Hugging Face form (a hub name such as gpt2, or a folder "
                                                           "written by save_pretrained) imported as a picolm model: "
                                                           "its model and tokenizer (same as --train.init_from)")
    p.add_argument("--hf-model", metavar="NAME_OR_DIR", help="start from a Hugging Face causal LM instead "
                                                             "(same as --train.hf_model)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="SFT/DPO rows that cannot be used are reported and skipped instead of stopping the run")
    p.add_argument("--log", default=None, help="extra trackers: tensorboard, wandb or both (comma-separated)")
    p.add_argument("--wandb-project", default=None, help="W&B project (default picolm)")
    p.add_argument("--wandb-run-name", default=None, help="W&B run name (default {architecture}-{dataset}-{size}-v{n}, "
                                                              "e.g. gpt_rope-stories-tiny-v2)")
    p.add_argument("--dry-run", action="store_true", help="print parameters, memory per process and tokens per step, "
                                                         "then stop before anything is allocated")

    p = verbs.add_parser("eval", formatter_class=Formatter, help="evaluate a run or checkpoint",
                         description="Any checkpoint, its architecture read from it. Metrics (--metrics, comma-"
                                     "separated): perplexity, accuracy (on a split; response tokens for SFT data); "
                                     "kinds (per-kind numeric accuracy); length (numeric sequences longer than in "
                                     "training); preference (accuracy and reward margin on --pairs); generation "
                                     "(Self-BLEU, distinct-1/2 over --samples samples); format (instruction-format "
                                     "compliance on --instructions); speed (greedy tokens/s, batch 1 and 8).")
    p.add_argument("target", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("--metrics", default="perplexity,accuracy", help="comma-separated metric names")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data", default=None, help="data directory (default: the one the run trained on)")
    p.add_argument("--pairs", default=None, help="preference: a DPO data directory (default: --data)")
    p.add_argument("--reference", default=None,
                   help="preference: the reference run or checkpoint (default: the run's --init-from)")
    p.add_argument("--instructions", default=None, help="format: an SFT data directory (default: --data)")
    p.add_argument("--samples", type=int, default=32, help="generation/format: how many prompts to generate for")
    add_sampling_options(p, max_new_tokens=64)
    p.add_argument("--json", dest="json_out", default=None, help="also write the metrics as JSON here")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-windows", type=int, default=None, help="evaluate at most N windows (default: all)")
    p.add_argument("--device", default="auto")

    p = verbs.add_parser("generate", formatter_class=Formatter, help="sample text from a model",
                         description="Greedy decoding at --temperature 0, else sampling with optional top-k/top-p.")
    p.add_argument("target", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    add_sampling_options(p)
    p.add_argument("--num-samples", type=int, default=1, help="several samples, decoded together in one batch")
    p.add_argument("--device", default="auto")

    p = verbs.add_parser("compare", formatter_class=Formatter, help="compare runs, or run a whole experiment",
                         description="With run directories: their final metrics side by side (a markdown table) and "
                                     "their loss curves overlaid, written to OUT/compare.md and OUT/compare.png.\n\n"
                                     "With a compare recipe (a .yaml file, or a built-in one by name: numeric-compare, "
                                     "positions-compare, ar-vs-diffusion): prepare its data, train every run of it "
                                     "for the same steps, evaluate, sample and analyse each, and write "
                                     "OUT/table.md, OUT/results.json and OUT/curves.png (OUT defaults to "
                                     "runs/compare-NAME). Run it again to continue an interrupted experiment. "
                                     "Settings such as --train.max_steps 3000 or --model.preset small apply to "
                                     "every run.",
                         epilog="examples:\n"
                                "  picolm compare runs/a runs/b --out compare\n"
                                "  picolm compare numeric-compare\n"
                                "  picolm compare positions-compare --train.max_steps 5000 --device cuda")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR | RECIPE")
    p.add_argument("--out", default=None, help="output folder (default: compare, or runs/compare-NAME for a recipe)")
    p.add_argument("--data", default=None, help="recipe: an already prepared data directory to use instead")
    p.add_argument("--device", default="auto", help="recipe: where to train and evaluate")

    p = verbs.add_parser("analyze", formatter_class=Formatter, help="look inside a model: embeddings, attention, neurons",
                         description="Report-ready plots of what a model learned, written to --out: embedding_pca.png "
                                     "(token embeddings on their first two principal components, coloured by token "
                                     "kind), attention.png (attention weights per layer and head for --text; for "
                                     "linear attention, the normalised kernel weights), and neurons.png with "
                                     "neurons.json (which MLP units respond to which numeric sequence kind; numeric "
                                     "data only).")
    p.add_argument("target", metavar="RUN_DIR", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("--what", default="pca,attention,neurons", help="comma-separated: pca, attention, neurons")
    p.add_argument("--text", default=None,
                   help="attention: the input to show (default: the first validation document of the run's data)")
    p.add_argument("--data", default=None, help="neurons: a numeric data directory (default: the run's)")
    p.add_argument("--out", default=None, help="folder for the plots (default: RUN_DIR/analysis)")
    p.add_argument("--max-windows", type=int, default=256, help="neurons: validation windows to average over")
    p.add_argument("--device", default="auto")

    for verb, what in (("chat", "chat with a model in the terminal"), ("serve", "chat with a model on a local web page")):
        p = verbs.add_parser(verb, formatter_class=Formatter, help=what,
                             description=f"{what[0].upper() + what[1:]}, its replies streamed as they are generated. "
                                         "Each message is answered on its own: fine-tuned (SFT/DPO) models get the "
                                         "instruction template, pretrained ones continue the text. Every session is "
                                         "saved as CHATS_DIR/<Month_DD_YYYY_HH_MM_SS>/transcript.txt with its "
                                         "settings.")
        p.add_argument("target", help="run directory (best, else last checkpoint) or checkpoint file")
        add_sampling_options(p, max_new_tokens=200)
        p.add_argument("--template", default="auto", choices=["auto", "instruction", "none"],
                       help="auto: instruction for SFT/DPO runs, none (plain continuation) otherwise")
        p.add_argument("--chats-dir", default="chats", help="where sessions are saved")
        p.add_argument("--device", default="auto")
        if verb == "serve":
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, default=8000)

    p = verbs.add_parser("export", formatter_class=Formatter, help="write a model as a transformers folder",
                         description="Write a run (its best, else last, checkpoint) or a checkpoint file into the new "
                                     "folder OUT_DIR, loadable with AutoModelForCausalLM.from_pretrained(OUT_DIR) and "
                                     "AutoTokenizer.from_pretrained(OUT_DIR): config.json, model.safetensors (float32 "
                                     "weights), generation_config.json (EOS and padding ids) and the tokenizer "
                                     "(tokenizer.json, tokenizer_config.json; it encodes text as picolm does).\n\n"
                                     "The class follows the architecture:\n"
                                     "  learned positions + GELU + LayerNorm (softmax, causal)  -> GPT2LMHeadModel\n"
                                     "  RoPE + SwiGLU + RMSNorm (softmax, causal)               -> LlamaForCausalLM\n"
                                     "  RoPE + GELU + LayerNorm (softmax, causal)               -> GPTNeoXForCausalLM\n"
                                     "  a run trained from --hf-model                           -> its own class\n"
                                     "  any other picolm model (linear attention, differential inputs, no positions,\n"
                                     "  other MLP/norm pairs, masked diffusion, sdd)            -> PicolmForCausalLM\n"
                                     "GPT-2, Llama and GPT-NeoX folders load without picolm installed; "
                                     "PicolmForCausalLM needs picolm (import picolm.models.picolm_transformers, or "
                                     "trust_remote_code=True).",
                         epilog="examples:\n"
                                "  picolm export runs/stories --format hf exported/stories\n"
                                "  lm_eval --model hf --model_args pretrained=exported/stories --tasks hellaswag")
    p.add_argument("target", metavar="RUN_DIR|CKPT", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("out", metavar="OUT_DIR", help="folder to write (new, or empty)")
    p.add_argument("--format", default="hf", help="hf: a Hugging Face transformers folder (the one format)")

    p = verbs.add_parser("quickstart", formatter_class=Formatter, help="the whole pipeline on built-in data",
                         description="Story corpus -> BPE tokenizer -> pretraining -> SFT on story specifications "
                                     "-> DPO toward horror -> evaluation -> plots -> report.md, in about ten "
                                     "minutes on a 2-core CPU. Steps or epochs given for a stage replace its time "
                                     "budget. An interrupted quickstart resumes where it stopped.")
    p.add_argument("--out", default="runs/quickstart", help="folder for the data, the three runs and the report")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--base", default=None, metavar="RUN_DIR",
                   help="start from this pretrained run or checkpoint instead of pretraining")
    p.add_argument("--pretrain-minutes", type=float, default=2.5, help="pretraining time budget")
    p.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps instead")
    p.add_argument("--sft-minutes", type=float, default=1.5, help="SFT time budget")
    p.add_argument("--sft-steps", type=int, default=None, help="SFT steps instead")
    p.add_argument("--sft-epochs", type=float, default=None, help="SFT epochs instead")
    p.add_argument("--dpo-minutes", type=float, default=1.5, help="DPO time budget")
    p.add_argument("--dpo-steps", type=int, default=None, help="DPO steps instead")
    p.add_argument("--dpo-epochs", type=float, default=None, help="DPO epochs instead")
    p.add_argument("--samples", type=int, default=96, help="held-out prompts to sample per model for the report")
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take `--section.key value` / `--section.key=value` settings out of argv; return the rest and them."""
    rest, overrides, i = [], {}, 0
    while i < len(argv):
        token = argv[i]
        key, eq, value = token[2:].partition("=")
        if not (token.startswith("--") and "." in key):
            rest.append(token)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise PicolmError("missing value", field=key)
            value = argv[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return rest, overrides


def cmd_prepare(args) -> int:
    from picolm.data.pack import PrepareOptions, prepare

    try:
        ratios = tuple(float(x) for x in args.split_ratios.split(","))
    except ValueError:
        raise PicolmError(f"expected three numbers like 0.8,0.1,0.1, got {args.split_ratios!r}",
                          field="--split-ratios") from None
    if len(ratios) != 3:
        raise PicolmError("expected three fractions: train,val,test", field="--split-ratios")
    options = PrepareOptions(source=args.source, out=args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                             limit=args.limit, subset_ratio=args.subset_ratio, split_ratios=ratios,
                             use_source_splits=not args.ignore_source_splits, seed=args.seed,
                             num_sequences=args.num_sequences, min_length=args.min_length,
                             max_length=args.max_length, max_value=args.max_value, hub_dir=args.hub_dir,
                             skip_bad_rows=args.skip_bad_rows, stream=args.stream, shard_tokens=args.shard_tokens,
                             tokenizer_sample_mb=args.tokenizer_sample_mb, workers=args.workers)
    meta = prepare(options)
    if meta["task"] == "text":
        print(f"wrote {args.out} (vocab {meta['vocab_size']}, {meta['encode_tokens_per_second']:,} tokens/s encoding)")
    else:
        print(f"wrote {args.out} ({meta['task']} examples; they are tokenized by `picolm train` with the tokenizer "
              "of the model it starts from)")
    return 0


def _train_config(args, overrides: dict[str, str]):
    from picolm.config import apply_overrides, build_config, load_config

    if args.data:
        overrides["data.path"] = args.data
    if args.init_from:
        overrides["train.init_from"] = args.init_from
    if args.hf_model:
        overrides["train.hf_model"] = args.hf_model
    if args.skip_bad_rows:
        overrides["data.skip_bad_rows"] = "true"
    if args.log:
        overrides["log.backends"] = args.log
    if args.wandb_project:
        overrides["log.project"] = args.wandb_project
    if args.wandb_run_name:
        overrides["log.run_name"] = args.wandb_run_name
    if not args.resume:
        config = build_config(args.recipe, overrides)
        if not config.data.path:
            raise PicolmError("no data: pass --data DATA_DIR (from `picolm prepare`)", field="--data")
        return config, Path(args.out or f"runs/{Path(config.data.path).name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        raise PicolmError("not a run directory (no config.yaml)", path=run_dir)
    if args.recipe or args.out:
        raise PicolmError("--resume continues a run as it was configured; pass no recipe or --out")
    config = load_config(run_dir / "config.yaml")
    saved = config.to_dict()
    apply_overrides(config, overrides)
    for section in ("model", "data"):
        for name, value in config.to_dict()[section].items():
            if value != saved[section][name]:
                raise PicolmError(f"cannot change it when resuming (the run has {saved[section][name]!r})",
                                  field=f"{section}.{name}")
    config.validate()
    return config, run_dir


def cmd_train(args, overrides: dict[str, str]) -> int:
    from picolm.train.report import finish_run
    from picolm.train.trainer import Trainer

    config, run_dir = _train_config(args, overrides)
    if args.dry_run:
        from picolm.train.distributed import Distributed
        from picolm.train.plan import describe, estimate, resolve_model

        resolve_model(config)
        print(describe(estimate(config, Distributed().world_size), config))
        return 0
    trainer = Trainer(config, run_dir, resume=bool(args.resume))
    try:
        n_params = trainer.model.num_params()
        autocast = str(trainer.autocast_dtype).replace("torch.", "") if trainer.autocast_dtype else None
        processes = trainer.distributed.world_size
        trainer.log(f"model: {n_params / 1e6:.2f}M parameters on {trainer.device}"
                    f"{' x ' + str(processes) + ' processes (' + config.train.parallel + ')' if processes > 1 else ''}"
                    f"{' with ' + autocast + ' autocast' if autocast else ''}; run directory {run_dir}")
        result = trainer.fit()
        finish_run(trainer, result)
    except BaseException:
        trainer.close(failed=True)
        raise
    trainer.close()
    return 130 if result.stop_reason == "interrupted" else 0


def _format_metrics(metrics: dict) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                     for k, v in metrics.items())


def cmd_eval(args) -> int:
    from picolm.eval.suite import EvalRequest, RunEvaluation
    from picolm.models.loading import load_model
    from picolm.train.trainer import resolve_device

    request = EvalRequest(metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()), split=args.split,
                          data=args.data, pairs=args.pairs, reference=args.reference,
                          instructions=args.instructions, samples=args.samples, sampling=sampling_options(args),
                          batch_size=args.batch_size, max_windows=args.max_windows)
    request.validate()
    device = resolve_device(args.device, field="--device")
    result = RunEvaluation(load_model(args.target, device=device), request, device).run()
    print(_format_metrics(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


def sampling_options(args):
    """The generation settings shared by generate, chat and serve."""
    from picolm.generate import SamplingOptions

    options = SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                              stop=tuple(args.stop or ()), seed=args.seed, steps=args.steps,
                              remasking=args.remasking, block_length=args.block_length)
    options.validate()
    return options


def cmd_generate(args) -> int:
    from picolm.generate import TextGenerator
    from picolm.models.loading import load_model
    from picolm.train.trainer import resolve_device

    options = sampling_options(args)
    device = resolve_device(args.device, field="--device")
    loaded = load_model(args.target, device=device)
    options.check_model(loaded.model)
    generator = TextGenerator(loaded.model, loaded.tokenizer, device)
    # numeric tokens are joined with spaces: the continuation's first number must not run into the prompt's last
    prompt = args.prompt + (" " if getattr(loaded.tokenizer, "separator", "") and args.prompt.strip() else "")
    if args.num_samples == 1:
        print(prompt, end="", flush=True)
        for piece in generator.stream(args.prompt, options):
            print(piece, end="", flush=True)
        print()
        return 0
    for text in generator.complete([args.prompt] * args.num_samples, options):
        print(prompt + text + "\n")
    return 0


def cmd_compare(args, overrides: dict[str, str]) -> int:
    from picolm.analysis.compare import compare_runs
    from picolm.analysis.experiment import is_experiment, load_experiment, run_experiment

    if len(args.runs) == 1 and is_experiment(args.runs[0]):
        report = run_experiment(load_experiment(args.runs[0]), args.out, overrides, args.data, args.device)
        print(f"\nreport: {report}")
        return 0
    if overrides or args.data:
        raise PicolmError("settings and --data apply to a compare recipe, not to finished runs",
                          field="--" + next(iter(overrides)) if overrides else "--data")
    table, report = compare_runs(args.runs, args.out or "compare")
    print(table)
    print(f"\nreport: {report}")
    return 0


def cmd_analyze(args) -> int:
    from picolm.analysis.interpret import analyze_run
    from picolm.train.trainer import resolve_device

    if args.max_windows < 1:
        raise PicolmError("must be at least 1", field="--max-windows")
    device = resolve_device(args.device, field="--device")
    for path in analyze_run(args.target, args.what, args.text, args.data, args.out, args.max_windows, device):
        print(f"wrote {path}")
    return 0


def _chat_session(args):
    from picolm.chat.session import ChatSession
    from picolm.models.loading import load_model
    from picolm.train.trainer import resolve_device

    options = sampling_options(args)
    device = resolve_device(args.device, field="--device")
    return ChatSession(load_model(args.target, device=device), options, device, args.template, args.chats_dir)


def cmd_chat(args) -> int:
    from picolm.chat.terminal import chat_loop

    chat_loop(_chat_session(args))
    return 0


def cmd_serve(args) -> int:
    from picolm.chat.web import make_server

    session = _chat_session(args)
    server = make_server(session, args.host, args.port)
    print(f"chatting with {session.loaded.path} on http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if session.turns:
            print(f"transcript: {session.transcript}")
    return 0


def cmd_export(args) -> int:
    from picolm.export import STANDALONE, export_run

    exported = export_run(args.target, args.out, args.format)
    print(f"wrote {exported.out_dir}: {', '.join(exported.files)}")
    needs = "" if exported.model_class in STANDALONE else " (with picolm installed)"
    print(f"loads as {exported.model_class} with AutoModelForCausalLM.from_pretrained({str(exported.out_dir)!r})"
          f"{needs}")
    return 0


def cmd_quickstart(args) -> int:
    from picolm.quickstart import QuickstartOptions, run_quickstart

    options = QuickstartOptions(**{k: v for k, v in vars(args).items() if k not in ("verb", "debug")})
    run_quickstart(options)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv, overrides = split_overrides(argv)
    except PicolmError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    if overrides and args.verb not in ("train", "compare"):
        parser.error(f"settings such as --{next(iter(overrides))} apply to `picolm train` and `picolm compare` only")
    try:
        if args.verb in ("train", "compare"):
            return {"train": cmd_train, "compare": cmd_compare}[args.verb](args, overrides)
        return {"prepare": cmd_prepare, "eval": cmd_eval, "generate": cmd_generate,
                "analyze": cmd_analyze, "chat": cmd_chat, "serve": cmd_serve, "export": cmd_export,
                "quickstart": cmd_quickstart}[args.verb](args)
    except PicolmError as exc:
        if args.debug:
            raise
        print(f"picolm {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"picolm {args.verb}: interrupted", file=sys.stderr)
        return 130
