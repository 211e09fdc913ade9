"""`crab-rt evaluate`: metrics, JSON report and confusion matrix for a checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a manifest split (WAR, UAR, macro-F1)")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt from crab-rt train")
    p.add_argument("--manifest", required=True, help="CSV or JSONL manifest")
    p.add_argument("--split", action="append", required=True, help="split to evaluate (repeatable)")
    p.add_argument("--out", default=None, help="report folder (default: next to the checkpoint, eval/)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from crab_rt.train.evaluate import evaluate_checkpoint
    except ImportError as e:
        from crab_rt.errors import missing_dependency

        raise missing_dependency(e.name or "torch", "train") from e
    from crab_rt.reporting import format_report_table

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    report = evaluate_checkpoint(args.checkpoint, args.manifest, args.split, out, args.batch_size, args.device)
    print(f"{args.checkpoint} on {args.manifest} [{', '.join(args.split)}]")
    print(format_report_table(report))
    for kind, path in report["files"].items():
        print(f"{kind}: {path}")
    return 0
