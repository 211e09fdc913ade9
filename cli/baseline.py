"""`crab-rt baseline`: the classical SER baselines (eGeMAPS, TF-IDF, late fusion) beside Crab checkpoints."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "baseline", parents=[common],
        help="train and report the classical baselines (openSMILE eGeMAPS + logistic regression, TF-IDF + "
        "logistic regression, late fusion) on a manifest, beside Crab checkpoints",
        description=(
            "Fit openSMILE eGeMAPSv02 functionals + logistic regression (speech), TF-IDF + logistic regression "
            "on the manifest's text (transcript), and their late fusion on the train split, choose their "
            "regularisation (and the fusion weight) by UAR on the dev split, and report WAR, UAR, macro-F1 and "
            "the confusion on the report splits, with crab-rt evaluate's metrics. --checkpoint adds Crab "
            "models to the same table. On a synthetic corpus (crab-rt synth) the table also shows the "
            "corpus's ceilings. Needs the [baselines] extra."),
    )
    p.add_argument("--manifest", required=True, help="CSV or JSONL manifest with train, dev and the report splits")
    p.add_argument("--labels", default="neutral,happy,angry,sad",
                   help="class names in order, comma-separated (default: neutral,happy,angry,sad)")
    p.add_argument("--split", action="append", default=None,
                   help="split to report (repeatable; default: dev and test)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="a Crab checkpoint (best.pt) to report beside the baselines on the same splits (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write baselines.json here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from crab_rt.errors import ConfigError, requires_extra

    with requires_extra("baselines", "sklearn"):
        from crab_rt.train.baselines import BaselineConfig, format_baseline_table, run_baselines
    labels = tuple(x.strip() for x in args.labels.split(",") if x.strip())
    splits = tuple(dict.fromkeys(args.split or ("dev", "test")))
    config = BaselineConfig(labels=labels, report_splits=splits).validate()
    result = run_baselines(args.manifest, config, progress=not args.no_progress and args.verbosity >= 0)
    extra: dict[str, dict[str, dict]] = {s: {} for s in splits}
    if args.checkpoint:
        with requires_extra("train"):
            from crab_rt.train.evaluate import evaluate_checkpoint
        import tempfile

        for checkpoint in args.checkpoint:
            for split in splits:
                with tempfile.TemporaryDirectory() as tmp:
                    report = evaluate_checkpoint(checkpoint, args.manifest, [split], tmp)
                if report["labels"] != list(labels):
                    raise ConfigError(f"{checkpoint}: labels {report['labels']} differ from --labels {list(labels)}")
                ablation = f", {report['ablation']}" if report["ablation"] else ""
                name = f"Crab {report['modality']}{ablation} ({Path(checkpoint).parent.name})"
                extra[split][name] = report
    print(f"baselines on {args.manifest} (trained on {config.train_split}, selected on {config.dev_split})")
    print(format_baseline_table(result, extra), end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        crab = {s: {n: {k: r[k] for k in ("war", "uar", "macro_f1", "confusion", "num_samples")}
                    for n, r in rows.items()} for s, rows in extra.items()}
        (out / "baselines.json").write_text(json.dumps({**result, "crab": crab}, indent=2) + "\n")
        print(f"report: {out / 'baselines.json'}")
    return 0
