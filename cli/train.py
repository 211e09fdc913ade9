"""`crab-rt train`: train a Crab model from a TOML recipe, in one process or several (torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Set by `--nproc-per-node` for the processes it starts: their failures reach the user through its one line.
LAUNCHED_ENV = "CRAB_RT_TRAIN_LAUNCHED"
PEER_FAILURE_GRACE_S = 3.0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train", parents=[common],
        help="train a Crab model (MLCS + weighted CE) from a recipe",
        description="Train a Crab model. Recipes are TOML files (built-in: iemocap, meld, msp_podcast, "
        "synthetic, and the paper's ablations); any key can be overridden with --set section.key=value. "
        "Data-parallel: run it under torchrun (torchrun --standalone --nproc-per-node N -m crab_rt.cli train "
        "...), or give --nproc-per-node N to start N processes on this machine; the recipe's global batch "
        "stays the same.",
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
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt if it exists (also with another number of processes)")
    p.add_argument("--stop-after-epoch", type=int, metavar="N",
                   help="stop after epoch N (last.pt is written; --resume continues), e.g. for a time-limited job")
    p.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="start N training processes on this machine (torchrun's agent, Gloo on the CPU, NCCL "
                   "with one GPU each); a failed process ends them all with one line naming its rank")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crab_rt.errors import ConfigError, CrabError, requires_extra

    if args.nproc_per_node is not None:
        if "WORLD_SIZE" in os.environ:
            raise ConfigError("--nproc-per-node starts the processes itself; under torchrun leave it out")
        if args.nproc_per_node < 1:
            raise ConfigError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
        return _launch(args)
    if args.stop_after_epoch is not None and args.stop_after_epoch < 1:
        raise ConfigError(f"--stop-after-epoch must be >= 1, got {args.stop_after_epoch}")
    with requires_extra("train"):
        from crab_rt.train.distributed import World

    world = World.from_environment()
    if not world.distributed:
        return _train(args, world)
    if not world.is_main:  # rank 0 alone reports progress
        logging.getLogger("crab_rt").setLevel(logging.WARNING)
        args.no_progress = True
    try:
        return _train(args, world)
    except CrabError as e:
        return _rank_failed(world, str(e), 2)
    except Exception as e:  # noqa: BLE001 (e.g. CUDA out of memory, or a collective that lost a peer)
        # A rank that lost a peer is a consequence: torchrun's agent, which polls every 0.1 s, stops it during
        # this wait, so the rank that failed first is the one reported.
        time.sleep(PEER_FAILURE_GRACE_S)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return _rank_failed(world, f"{type(e).__name__}: {first}", 1)


def _rank_failed(world, message: str, code: int) -> int:
    """Report a rank's failure as one line: in torchrun's error file (its agent's report, and the one line of
    `--nproc-per-node`, show it), and on stderr unless `--nproc-per-node` started this process."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        Path(error_file).write_text(json.dumps({"message": message, "timestamp": int(time.time())}))
    if not os.environ.get(LAUNCHED_ENV):
        sys.stderr.write(f"crab-rt: error: {world.describe()}: {message}\n")  # one write: ranks share stderr
    return code


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    for flag, key in ((args.manifest, "data.manifest"), (args.out, "run.out_dir"),
                      (args.epochs, "optim.epochs"), (args.device, "run.device")):
        if flag is not None:
            overrides.append(f"{key}={flag!r}" if isinstance(flag, str) else f"{key}={flag}")
    if args.no_progress or args.verbosity < 0:
        overrides.append("run.progress=false")
    return overrides


def _check_recipe(args: argparse.Namespace, world_size: int) -> None:
    from crab_rt.train.config import load_recipe
    from crab_rt.train.distributed import local_accumulation

    config = load_recipe(args.recipe, _overrides(args), ablation=args.ablation)
    local_accumulation(config.optim.grad_accum_steps, world_size)


def _train(args: argparse.Namespace, world) -> int:
    from crab_rt.train.config import load_recipe
    from crab_rt.train.distributed import leave_world
    from crab_rt.train.trainer import Trainer

    config = load_recipe(args.recipe, _overrides(args), ablation=args.ablation)
    trainer = Trainer(config, resume=args.resume, world=world)
    processes = f", {world.world_size} processes" if world.distributed else ""
    log.info(f"training on {trainer.device}{processes}: {len(trainer.train_rows)} train / {len(trainer.dev_rows)} "
             f"dev utterances, legs {list(config.loss.legs) or 'none'} ({config.loss.leg_loss}"
             f"{', contrastive batch ' + config.loss.contrastive_batch if world.distributed else ''}), "
             f"out {config.run.out_dir}")
    best = trainer.fit(stop_after_epoch=args.stop_after_epoch)
    leave_world(world)
    if world.is_main:
        if trainer.epoch < config.optim.epochs:
            print(f"stopped after epoch {trainer.epoch} of {config.optim.epochs}: {config.run.out_dir}/last.pt "
                  f"(--resume continues); best dev {best['metric'].upper()} so far {best['value']:.4f}")
        else:
            print(f"best dev {best['metric'].upper()} {best['value']:.4f} at epoch {best['epoch']}: "
                  f"{config.run.out_dir}/best.pt")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """`argv` without `--nproc-per-node N` / `--nproc-per-node=N`."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc-per-node":
            skip = True
        elif not item.startswith("--nproc-per-node="):
            out.append(item)
    return out


def _launch(args: argparse.Namespace) -> int:
    """Run `crab-rt train` (the same arguments) in `--nproc-per-node` processes with torchrun's agent."""
    import uuid

    from crab_rt.errors import requires_extra

    with requires_extra("train"):
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import elastic_launch
        from torch.distributed.run import config_from_args, get_args_parser

    n = args.nproc_per_node
    _check_recipe(args, n)  # a recipe error as one line here, not one per process
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    os.environ[LAUNCHED_ENV] = "1"
    if args.verbosity < 1:  # the agent's own notes (one per process start and stop) only with -v
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    torchrun_args = get_args_parser().parse_args([
        "--nnodes", "1", "--nproc-per-node", str(n), "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
        "--rdzv-id", str(uuid.uuid4()), "--max-restarts", "0", "-m", "crab_rt.cli", *_without_nproc(args.argv),
    ])
    config, command, command_args = config_from_args(torchrun_args)
    log.info(f"starting {n} training processes")
    try:
        elastic_launch(config, command)(*command_args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        no_report = failure.exitcode > 0 and failure.error_file == "<N/A>"  # it failed before it could write one
        why = f"exit code {failure.exitcode}, its error above" if no_report else failure.message
        print(f"crab-rt: error: rank {rank} of {n} failed ({why}); the other processes were stopped",
              file=sys.stderr, flush=True)
        return 2 if failure.exitcode == 2 else 1
    return 0
