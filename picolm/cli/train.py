"""`picolm train`: a run directory from defaults, a YAML recipe and `--section.field value` settings; or the
continuation of an interrupted run (`--resume`)."""

from __future__ import annotations

import time
from pathlib import Path

from picolm.cli.common import Formatter, output_folder, settings_help
from picolm.errors import PicolmError


def register(verbs) -> None:
    p = verbs.add_parser("train", formatter_class=Formatter, help="train a model into a run directory",
                         description="Train from defaults, a YAML recipe and dotted overrides, e.g.\n"
                                     "  picolm train recipes/stories-tiny.yaml --data data/stories --out runs/a "
                                     "--model.n_layer 4 --train.lr 1e-3\n"
                                     "Any field of the model, data, train, objective, log and lora sections can be set as "
                                     "--section.field VALUE; the list is below.",
                         epilog=settings_help)
    p.add_argument("recipe", nargs="?", help="YAML recipe (sections model, data, train, objective, log, lora)")
    p.add_argument("--data", help="data directory from `picolm prepare` (same as --data.path)")
    p.add_argument("--out", type=output_folder, help="run directory (default runs/<data>-<time>)")
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
    p.set_defaults(run=run, takes_settings=True, trains=True)


def train_config(args, settings: dict[str, str]):
    """The run's config and directory: a new run's from the recipe and settings, a resumed run's from its
    config.yaml with the settings that may change (not the model's or the data's)."""
    from picolm.config import apply_overrides, build_config, load_config
    from picolm.methods import check_config

    for option, key in (("data", "data.path"), ("init_from", "train.init_from"), ("hf_model", "train.hf_model"),
                        ("log", "log.backends"), ("wandb_project", "log.project"), ("wandb_run_name", "log.run_name")):
        if getattr(args, option):
            settings[key] = getattr(args, option)
    if args.skip_bad_rows:
        settings["data.skip_bad_rows"] = "true"
    if not args.resume:
        config = build_config(args.recipe, settings)
        if not config.data.path:
            raise PicolmError("no data: pass --data DATA_DIR (from `picolm prepare`)", field="--data")
        if not (config.train.init_from or config.train.hf_model):  # else the model comes from the start
            check_config(config)
        return config, Path(args.out or f"runs/{Path(config.data.path).name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        raise PicolmError("not a run directory (no config.yaml)", path=run_dir)
    if args.recipe or args.out:
        raise PicolmError("--resume continues a run as it was configured; pass no recipe or --out")
    saved = load_config(run_dir / "config.yaml")
    config = apply_overrides(saved, settings)
    for section in ("model", "data"):
        for name, value in config.to_dict()[section].items():
            if value != saved.to_dict()[section][name]:
                raise PicolmError(f"cannot change it when resuming (the run has {saved.to_dict()[section][name]!r})",
                                  field=f"{section}.{name}")
    config.validate()
    return config, run_dir


def run(args) -> int:
    from picolm.analysis.report import finish_run
    from picolm.train.trainer import Trainer

    config, run_dir = train_config(args, args.settings)
    if args.dry_run:
        from picolm.train.distributed import Distributed
        from picolm.train.plan import describe, estimate
        from picolm.train.setup import plan_config

        config = plan_config(config)
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
