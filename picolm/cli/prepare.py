"""`picolm prepare`: a data directory (tokens + tokenizer, or SFT/DPO examples) from a source."""

from __future__ import annotations

import argparse

from picolm.cli.common import Formatter, Fractions, count, number, output_folder
from picolm.config import MAX_VOCAB, SEEDS
from picolm.errors import PicolmError

BPE_ALPHABET = 256 + 3  # a byte-level BPE holds every byte and the EOS, padding and mask tokens before any merge


def register(verbs) -> None:
    p = verbs.add_parser("prepare", formatter_class=Formatter, help="build a data directory (tokens + tokenizer)",
                         description="Read a source, train or load a tokenizer, and write train/val/test token "
                                     "files, meta.json and tokenizer/ into --out.",
                         epilog="examples:\n"
                                "  picolm prepare --source tinystories --out data/ts --hub-dir copies/tinystories\n"
                                "  picolm prepare --source wikitext-103:wikitext-103-v1 --out data/wiki   # another "
                                "config\n"
                                "  picolm prepare --source hf:roneneldan/TinyStories --field text --out data/ts\n"
                                "  picolm prepare --source hf:HuggingFaceH4/ultrafeedback_binarized --split-ratios "
                                "0.9,0.05,0.05 --out data/uf\n"
                                "  picolm prepare --source hh-rlhf --hub-dir copies/hh-test-only --split-ratios "
                                "0.8,0.1,0.1 --out data/hh\n"
                                "  picolm prepare --source harmless-base/train.jsonl.gz --out data/hh   # Anthropic HH "
                                "dialogues\n"
                                "  picolm prepare --source chats.jsonl --out data/chat   # TRL messages or "
                                "conversational pairs\n"
                                "  picolm prepare --source pairs:numeric --tokenizer numeric --out data/numeric-dpo")
    p.add_argument("--source", required=True,
                   help="built-in: numeric | stories | horror-sft | horror-dpo; hub: tinystories | wikitext-103 | "
                        "openwebtext | fineweb | alpaca | dolly | rm-static | hh-rlhf, each as NAME:CONFIG for another "
                        "of its dataset's configs (wikitext-103 is wikitext-103-raw-v1); hf:NAME[:CONFIG] (any hub "
                        "dataset or local dataset folder: text in --field, else examples detected from its "
                        "columns); pairs:SOURCE (preference pairs from a text source); or PATH.txt | "
                        "PATH.jsonl[:field] | PATH.json | PATH.parquet[:field], text and JSON also as .gz (JSON rows "
                        "may hold instruction/input/output, prompt with response/output/completion, "
                        "prompt/chosen/rejected, Anthropic HH chosen/rejected dialogues, or TRL's conversational "
                        "messages, prompt/completion and chosen/rejected message lists)")
    p.add_argument("--out", required=True, type=output_folder, help="data directory to write")
    p.add_argument("--tokenizer", default=None,
                   help="bpe (a byte-level BPE trained here) | gpt2 | numeric | char | hf:NAME_OR_PATH (a Hugging "
                        "Face tokenizer.json, its folder, or a hub name); default: numeric for --source numeric, "
                        "else bpe")
    p.add_argument("--vocab-size", type=count(BPE_ALPHABET, MAX_VOCAB), default=None,
                   help="BPE vocabulary size, its 256 bytes and 3 special tokens included (default: 32768 for "
                        "openwebtext and fineweb, else 4096); --tokenizer bpe only")
    p.add_argument("--limit", type=count(1), default=None, help="use at most N documents (per split for hub sources)")
    p.add_argument("--subset-ratio", type=number(0, 1, above=True), default=None,
                   help="use this fraction of the documents (at least one)")
    p.add_argument("--split-ratios", type=Fractions("train", "val", "test"), default=None,
                   help="train,val,test fractions (default 0.8,0.1,0.1); given, they also re-split a source that has "
                        "its own splits, all of them merged (so a --hub-dir copy holding only some splits is usable)")
    p.add_argument("--ignore-source-splits", action="store_true",
                   help="re-split by --split-ratios (or its default) even when the source has its own splits")
    p.add_argument("--seed", type=count(*SEEDS), default=0, help="seed for generation and splitting")
    p.add_argument("--num-sequences", type=count(1, 10_000_000), default=None,
                   help="built-in sources: how many sequences or stories (default 100000 numeric, 13000 stories)")
    p.add_argument("--min-length", type=count(3, 10_000), default=None, help="numeric: shortest sequence (default 8)")
    p.add_argument("--max-length", type=count(3, 10_000), default=None, help="numeric: longest sequence (default 16)")
    p.add_argument("--max-value", type=count(1, 1_000_000), default=None,
                   help="numeric: largest value, at least twice --max-length (default 99)")
    p.add_argument("--hub-dir", default=None,
                   help="hub sources: load this local copy (same files and schema, one config's) instead of the hub")
    p.add_argument("--field", default=None,
                   help="hf:NAME sources: the column holding the text (default: the dataset's layout, read from its "
                        "columns: a text column, or SFT/preference example fields)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="SFT/DPO rows that cannot be used are reported and skipped instead of stopping")
    streamed = p.add_argument_group(
        "streaming (corpora larger than memory)",
        "The web sources, and with --stream hf:NAME text datasets and large .txt/.jsonl/.parquet files, are\n"
        "read as a stream in flat memory: val and test are held out by a hash of each document\n"
        "(--split-ratios), the BPE learns from a sample, documents are encoded in parallel, and the train\n"
        "tokens go to shards train-00000.bin, ... listed in meta.json (val.bin and test.bin stay single files).")
    streamed.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                          help="stream the source (default: on for openwebtext and fineweb, off otherwise)")
    streamed.add_argument("--shard-tokens", type=count(1), default=100_000_000,
                          help="tokens per train shard (200 MB as uint16)")
    streamed.add_argument("--tokenizer-sample-mb", type=number(0, 1e6, above=True), default=64.0,
                          help="the BPE learns from the first this many MB of train documents (at least one "
                               "document)")
    streamed.add_argument("--workers", type=count(0, 1024), default=None,
                          help="encoding processes, each with the tokenizer (default: one per core); 0 encodes in "
                               "the main process on the tokenizer's threads (slower, about 160 MB less memory)")
    p.set_defaults(run=run)


def run(args) -> int:
    from picolm.data.pack import prepare
    from picolm.data.preparation import PrepareOptions, default_tokenizer

    tokenizer = args.tokenizer or default_tokenizer(args.source)
    if args.vocab_size is not None and tokenizer != "bpe":
        raise PicolmError(f"applies to --tokenizer bpe only (this is {tokenizer}, whose vocabulary is its own)",
                          field="--vocab-size")
    resplit = args.ignore_source_splits or args.split_ratios is not None
    options = PrepareOptions(source=args.source, out=args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                             limit=args.limit, subset_ratio=args.subset_ratio,
                             split_ratios=args.split_ratios or PrepareOptions.split_ratios,
                             use_source_splits=not resplit, seed=args.seed,
                             num_sequences=args.num_sequences, min_length=args.min_length,
                             max_length=args.max_length, max_value=args.max_value, hub_dir=args.hub_dir,
                             field=args.field,
                             skip_bad_rows=args.skip_bad_rows, stream=args.stream, shard_tokens=args.shard_tokens,
                             tokenizer_sample_mb=args.tokenizer_sample_mb, workers=args.workers)
    meta = prepare(options)
    if meta["task"] == "text":
        print(f"wrote {args.out} (vocab {meta['vocab_size']}, {meta['encode_tokens_per_second']:,} tokens/s encoding)")
    else:
        print(f"wrote {args.out} ({meta['task']} examples; they are tokenized by `picolm train` with the tokenizer "
              "of the model it starts from)")
    return 0
