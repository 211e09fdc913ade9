"""`crab-rt train`: train a Crab model from a TOML recipe."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train", parents=[common],
        help="train a Crab model (MLCS + weighted CE) from a recipe",
        description="Train a Crab model. Recipes are TOML files (built-in: iemocap, meld, msp_podcast, "
        "synthetic, and the paper's ablations); any key can be overridden with --set section.key=value.",
    )
    p.add_argument("--recipe", default="synthetic",
                   help="built-in recipe name or path to a .toml file (default: synthetic)")
    p.add_argument("--manifest", help="shortcut for --set data.manifest=PATH")
    p.add_argument("--out", help="shortcut for --set run.out_dir=DIR")
    p.add_argument("--epochs", type=int, help="shortcut for --set optim.epochs=N")
    p.add_argument("--device", help="shortcut for --set run.device=auto|cpu|cuda|cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set loss.legs=[] (repeatable)")
    p.add_argument("--ablation", help="one of the paper's ablations: speech_only, text_only, ce_only, "
                   "ce_mpcl_classifier, mls_ce, scl, single_lr, hubert, wav2vec2")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crab_rt.errors import requires_extra

    with requires_extra("train"):
        from crab_rt.train.config import load_recipe
        from crab_rt.train.trainer import Trainer

    overrides = list(args.overrides)
    for flag, key in ((args.manifest, "data.manifest"), (args.out, "run.out_dir"),
                      (args.epochs, "optim.epochs"), (args.device, "run.device")):
        if flag is not None:
            overrides.append(f"{key}={flag!r}" if isinstance(flag, str) else f"{key}={flag}")
    if args.no_progress or args.verbosity < 0:
        overrides.append("run.progress=false")
    config = load_recipe(args.recipe, overrides, ablation=args.ablation)
    trainer = Trainer(config, resume=args.resume)
    log.info(f"training on {trainer.device}: {len(trainer.train_rows)} train / {len(trainer.dev_rows)} dev utterances, "
             f"legs {list(config.loss.legs) or 'none'} ({config.loss.leg_loss}), out {config.run.out_dir}")
    best = trainer.fit()
    print(f"best dev {best['metric'].upper()} {best['value']:.4f} at epoch {best['epoch']}: "
          f"{config.run.out_dir}/best.pt")
    return 0
