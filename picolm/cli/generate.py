"""`picolm generate`: text from a model, streamed as it is written."""

from __future__ import annotations

from picolm.cli.common import Formatter, add_dtype_option, add_sampling_options, count, device, sampling_options


def register(verbs) -> None:
    p = verbs.add_parser("generate", formatter_class=Formatter, help="sample text from a model",
                         description="Greedy decoding at --temperature 0, else sampling with optional top-k/top-p. "
                                     "Left-to-right models stream token by token; diffusion models denoise the whole "
                                     "continuation inside their context in --steps steps.")
    p.add_argument("target", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    add_sampling_options(p)
    p.add_argument("--num-samples", type=count(1, 1024), default=1,
                   help="several samples, decoded together in one batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    add_dtype_option(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from picolm.generate import TextGenerator
    from picolm.loading import load_model

    options = sampling_options(args)
    where = device(args.device)
    loaded = load_model(args.target, device=where, dtype=args.dtype)
    generator = TextGenerator(loaded.model, loaded.tokenizer, where)
    generator.check(options)
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
