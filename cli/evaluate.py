"""`crab-rt evaluate`: metrics, JSON report and confusion matrix for a checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "evaluate", parents=[common], help="evaluate a checkpoint on a manifest split (WAR, UAR, macro-F1)")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="best.pt or last.pt from crab-rt train; repeat it to compare models side by side "
                   "(e.g. the speech_only and text_only ablations beside the full model)")
    p.add_argument("--manifest", required=True, help="CSV or JSONL manifest")
    p.add_argument("--split", action="append", required=True, help="split to evaluate (repeatable)")
    p.add_argument("--out", default=None,
                   help="report folder (default: next to each checkpoint, eval/); with several checkpoints, "
                   "one subfolder per checkpoint")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--paper", choices=("iemocap", "meld", "msp-podcast"),
                   help="also print the paper's published numbers for this corpus beside ours: each --split "
                   "against its own paper row (several splits are also shown pooled, which has no paper row); "
                   "an ablation checkpoint (crab-rt train --ablation) also against its own Table III-V row")
    p.add_argument("--submission", metavar="CSV",
                   help="write an MSP-Podcast challenge submission (FileName,EmoClass) for the split's rows, "
                   "labelled or not (e.g. --split test3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crab_rt.errors import requires_extra

    with requires_extra("train"):
        from crab_rt.train.evaluate import evaluate_checkpoint
    from crab_rt.train.reporting import format_comparison_table, format_report_table

    if args.submission:
        return _submission(args)
    reports = []
    for i, checkpoint in enumerate(args.checkpoint):
        if args.out is None:
            out = Path(checkpoint).parent / "eval"
        else:
            out = Path(args.out) / (f"{i}-{Path(checkpoint).parent.name}" if len(args.checkpoint) > 1 else "")
        report = evaluate_checkpoint(checkpoint, args.manifest, args.split, out, args.batch_size, args.device)
        reports.append(report)
        pooled = " pooled" if len(report["per_split"]) > 1 else ""
        ablation = f", ablation {report['ablation']}" if report["ablation"] else ""
        print(f"{checkpoint} ({report['modality']}{ablation}) on {args.manifest} [{', '.join(args.split)}]{pooled}")
        print(format_report_table(report))
        fitted_on = report["calibration"]["fitted_on"]
        for name, entry in report["calibration"].items():
            if isinstance(entry, dict):
                what = "Crab" if name == "head" else "voice only"
                source = f"fitted on {fitted_on}" if fitted_on else "none fitted"
                print(f"calibration, {what}: temperature {entry['temperature']:.3f} ({source}): "
                      f"ECE {entry['ece_before']:.4f} -> {entry['ece_after']:.4f} (15 bins)")
        if "provisional" in report:
            p = report["provisional"]
            print(f"provisional (voice only): WAR {p['war']:.4f}  UAR {p['uar']:.4f}  macro-F1 {p['macro_f1']:.4f}")
        for kind, path in report["files"].items():
            print(f"{kind}: {path}")
        if args.paper:
            _paper_comparison(args.paper, report)
    if len(reports) > 1:
        names = [f"{r['modality']} ({Path(c).parent.name})" for r, c in zip(reports, args.checkpoint)]
        print(f"side by side on [{', '.join(args.split)}]:")
        print(format_comparison_table(reports, names), end="")
    return 0


def _paper_comparison(corpus: str, report: dict) -> None:
    """Each split against its own paper row; several splits also pooled, which the paper does not report."""
    from crab_rt.train.paper_results import compare_with_paper

    keys = ("war", "uar", "macro_f1")
    for split, metrics in report["per_split"].items():
        print(compare_with_paper(corpus, split, {k: metrics[k] for k in keys}, ablation=report["ablation"]))
        print()
    if len(report["per_split"]) > 1:
        splits = " + ".join(report["per_split"])
        print(f"pooled over {splits} ({report['num_samples']} utterances): WAR {report['war']:.4f}  "
              f"UAR {report['uar']:.4f}  macro-F1 {report['macro_f1']:.4f}  (pooled: no paper row; the paper "
              "reports each split separately)")


def _submission(args: argparse.Namespace) -> int:
    """Predict every row of the split(s), labelled or not, and write the challenge CSV."""
    from crab_rt.data.manifest import read_manifest
    from crab_rt.model.checkpoint import load_model
    from crab_rt.train.evaluate import predict
    from crab_rt.train.paper_results import write_msp_submission

    if len(args.checkpoint) > 1:
        from crab_rt.errors import ConfigError

        raise ConfigError("--submission takes one --checkpoint")
    model, tokenizer, payload = load_model(args.checkpoint[0], args.device)
    rows = read_manifest(args.manifest, args.split)
    _, probs = predict(model, tokenizer, rows,
                       payload["model_settings"]["max_audio_s"], args.batch_size, args.device)
    labels = [model.labels[i] for i in probs.argmax(1)]
    names = [r.audio.name for r in rows]
    path = write_msp_submission(names, labels, args.submission)
    print(f"{len(rows)} predictions -> {path}")
    return 0
