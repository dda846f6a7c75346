"""`picolm export`: a run as a folder Hugging Face `transformers` loads (picolm/interop/export.py)."""

from __future__ import annotations

from picolm.cli.common import Formatter, output_folder


def register(verbs) -> None:
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
                                     "PicolmForCausalLM needs picolm (import picolm.interop.picolm_transformers, or "
                                     "trust_remote_code=True).",
                         epilog="examples:\n"
                                "  picolm export runs/stories --format hf exported/stories\n"
                                "  lm_eval --model hf --model_args pretrained=exported/stories --tasks hellaswag")
    p.add_argument("target", metavar="RUN_DIR|CKPT", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("out", metavar="OUT_DIR", type=output_folder, help="folder to write (new, or empty)")
    p.add_argument("--format", default="hf", help="hf: a Hugging Face transformers folder (the one format)")
    p.set_defaults(run=run)


def run(args) -> int:
    from picolm.interop.export import STANDALONE, export_run

    exported = export_run(args.target, args.out, args.format)
    print(f"wrote {exported.out_dir}: {', '.join(exported.files)}")
    needs = "" if exported.model_class in STANDALONE else " (with picolm installed)"
    print(f"loads as {exported.model_class} with AutoModelForCausalLM.from_pretrained({str(exported.out_dir)!r})"
          f"{needs}")
    return 0
