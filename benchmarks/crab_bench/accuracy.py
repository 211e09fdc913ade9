"""Does the model hear emotion? Crab, its ablations and the classical baselines over corpus seeds.

For each seed: a spoken synthetic corpus (`crab-rt synth --voice espeak`, speaker-disjoint splits), its
Whisper tiny.en transcripts (`crab-rt transcribe-manifest --all`), the baselines (`crab_rt.train.baselines`:
eGeMAPS, TF-IDF, late fusion) and the synthetic recipe's Crab with its speech_only, text_only and ce_only
ablations (`crab-rt train`), all evaluated on the same dev and test splits. Reported: each row's median over
seeds with its min and max, the corpus ceilings, and whether the issue's inequalities hold on the test
medians (speech only >= eGeMAPS, text only >= TF-IDF, both >= late fusion and >= each ablation). Crab's run
also gives the provisional events' figures (its voice-only classifier) and both classifiers' expected
calibration error (15 bins) before and after the temperatures fitted on dev, with reliability diagrams pooled
over the seeds.

Corpora and runs are kept (`--corpora`, `--runs`) and reused when present, so a rerun after an interruption
goes on; `--fresh` retrains the models.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crab_bench.machine import describe_machine, results_dir
from crab_bench.stats import spread

MODELS = {"both": None, "speech_only": "speech_only", "text_only": "text_only", "ce_only": "ce_only"}
BASELINES = ("egemaps", "tfidf", "fusion")
ROW_NAMES = {
    "egemaps": "eGeMAPS + LR (speech)", "tfidf": "TF-IDF + LR (ASR text)", "fusion": "late fusion (eGeMAPS, TF-IDF)",
    "both": "Crab (speech + text)", "provisional": "Crab provisional (its voice-only classifier)",
    "speech_only": "Crab speech only", "text_only": "Crab text only",
    "ce_only": "Crab, CE only (no MLCS)",
}
CHECKS = (("speech_only", "egemaps"), ("text_only", "tfidf"), ("both", "fusion"), ("both", "speech_only"),
          ("both", "text_only"))
METRICS = ("uar", "war", "macro_f1")


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _crab(*args: str) -> list[str]:
    return [sys.executable, "-m", "crab_rt.cli", *args]


def corpus_name(seed: int, num: int, speakers: int) -> str:
    return f"spoken-{num}-{speakers}spk-seed{seed}"


def corpus(root: Path, seed: int, num: int, speakers: int) -> Path:
    """The seed's transcribed corpus manifest, made unless present."""
    folder = root / corpus_name(seed, num, speakers)
    manifest = folder / "manifest_asr.csv"
    if manifest.is_file():
        print(f"corpus seed {seed}: reusing {manifest}")
        return manifest
    if not (folder / "manifest.csv").is_file():
        _run(_crab("synth", "--out", str(folder), "--num", str(num), "--seed", str(seed), "--speakers",
                   str(speakers), "--voice", "espeak", "--quiet"))
    _run(_crab("transcribe-manifest", "--manifest", str(folder / "manifest.csv"), "--out", str(manifest),
               "--asr", "tiny.en", "--all", "--quiet"))
    return manifest


def train(manifest: Path, out: Path, ablation: str | None, fresh: bool) -> tuple[Path, float | None]:
    """best.pt of the synthetic recipe (with `ablation`), trained unless present; and the training seconds."""
    best = out / "best.pt"
    if best.is_file() and not fresh:
        print(f"reusing {best}")
        return best, None
    cmd = _crab("train", "--recipe", "synthetic", "--manifest", str(manifest), "--out", str(out), "--quiet")
    if ablation:
        cmd += ["--ablation", ablation]
    started = time.perf_counter()
    _run(cmd)
    return best, round(time.perf_counter() - started, 1)


def evaluate(checkpoint: Path, manifest: Path, splits: tuple[str, ...]) -> dict[str, dict]:
    from crab_rt.train.evaluate import evaluate_checkpoint

    out = {}
    for split in splits:
        with tempfile.TemporaryDirectory() as tmp:
            report = evaluate_checkpoint(checkpoint, manifest, [split], tmp)
        out[split] = {k: report[k] for k in (*METRICS, "confusion")}
        out[split]["calibration"] = report["calibration"]
        if "provisional" in report:
            out[split]["provisional"] = report["provisional"]
    return out


def calibrated_predictions(checkpoint: Path, manifest: Path, split: str) -> dict[str, tuple]:
    """{"final" | "provisional": (raw probabilities, calibrated probabilities, labels)} of a checkpoint on a
    split, with the temperatures training fitted on dev (for the pooled reliability diagrams)."""
    from crab_rt.data.manifest import read_manifest
    from crab_rt.model.checkpoint import load_model
    from crab_rt.train.calibration import softmax
    from crab_rt.train.evaluate import predict_logits

    model, tokenizer, payload = load_model(checkpoint)
    rows = [r for r in read_manifest(manifest, [split]) if r.label is not None]
    labels, logits, voice = predict_logits(model, tokenizer, rows, payload["model_settings"]["max_audio_s"])
    fitted = payload.get("calibration") or {}
    out = {"final": (softmax(logits), softmax(logits, fitted["head"]["temperature"]), labels)}
    if voice is not None:
        out["provisional"] = (softmax(voice), softmax(voice, fitted["speech_classifier"]["temperature"]), labels)
    return out


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    from crab_rt.train.baselines import BaselineConfig, run_baselines

    manifest = corpus(Path(args.corpora), seed, args.num, args.speakers)
    splits = ("dev", "test")
    base = run_baselines(manifest, BaselineConfig(report_splits=splits))
    rows: dict[str, dict] = {name: {s: {k: base["reports"][s][name][k] for k in (*METRICS, "confusion")}
                                    for s in splits} for name in BASELINES}
    seconds = {}
    predictions = {}
    for name, ablation in MODELS.items():
        best, secs = train(manifest, Path(args.runs) / corpus_name(seed, args.num, args.speakers) / name, ablation,
                           args.fresh)
        seconds[name] = secs
        rows[name] = evaluate(best, manifest, splits)
        if name == "both":
            predictions = {s: calibrated_predictions(best, manifest, s) for s in splits}
    rows["provisional"] = {s: {**rows["both"][s]["provisional"], "confusion": None} for s in splits}
    calibration = {s: {"final": rows["both"][s]["calibration"]["head"],
                       "provisional": rows["both"][s]["calibration"]["speech_classifier"]} for s in splits}
    from crab_rt.data.manifest import read_manifest

    labelled = [r for r in read_manifest(manifest) if r.label is not None]
    sizes = {s: sum(r.split == s for r in labelled) for s in ("train", *splits)}
    speakers = {s: len({r.speaker for r in labelled if r.split == s}) for s in ("train", *splits)}
    return {"seed": seed, "manifest": str(manifest), "split_sizes": sizes, "split_speakers": speakers, "rows": rows,
            "selected": base["selected"], "ceilings": base["ceilings"], "train_seconds": seconds,
            "calibration": calibration, "_predictions": predictions}


def summarize(per_seed: list[dict]) -> dict:
    summary: dict[str, dict] = {}
    for name in (*BASELINES, *MODELS, "provisional"):
        summary[name] = {s: {m: spread([r["rows"][name][s][m] for r in per_seed]) for m in METRICS}
                         for s in ("dev", "test")}
    ceilings = {}
    for cue in ("prosody", "text", "both"):
        ceilings[cue] = {s: {m: spread([r["ceilings"][s][cue][m] for r in per_seed if r["ceilings"]])
                             for m in ("uar", "war")} for s in ("dev", "test")}
    checks = []
    for better, than in CHECKS:
        a, b = summary[better]["test"]["uar"]["median"], summary[than]["test"]["uar"]["median"]
        checks.append({"row": better, "against": than, "uar": a, "against_uar": b, "holds": a >= b})
    calibration = {s: {stage: {k: spread([r["calibration"][s][stage][k] for r in per_seed])
                               for k in ("temperature", "ece_before", "ece_after")}
                       for stage in ("final", "provisional")} for s in ("dev", "test")}
    return {"rows": summary, "ceilings": ceilings, "checks": checks, "calibration": calibration}


def reliability_plots(per_seed: list[dict], out: Path, name: str) -> list[Path]:
    """One reliability diagram per split: Crab's final and provisional probabilities, raw and calibrated,
    pooled over the seeds."""
    import numpy as np

    from crab_rt.train.calibration import reliability_diagram

    paths = []
    for split in ("dev", "test"):
        curves = {}
        for stage, what in (("final", "final (Crab)"), ("provisional", "provisional (voice only)")):
            parts = [r["_predictions"][split][stage] for r in per_seed]
            labels = np.concatenate([p[2] for p in parts])
            curves[f"{what}, raw"] = (np.concatenate([p[0] for p in parts]), labels)
            curves[f"{what}, calibrated"] = (np.concatenate([p[1] for p in parts]), labels)
        n = len(curves["final (Crab), raw"][1])
        paths.append(reliability_diagram(curves, out / f"{name}_reliability_{split}.png",
                                         f"{split} split, {len(per_seed)} corpus seeds pooled ({n} clips)"))
    return paths


def _cell(s: dict) -> str:
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def markdown(result: dict) -> str:
    seeds = ",".join(str(r["seed"]) for r in result["per_seed"])
    summary = result["summary"]
    sizes = result["per_seed"][0].get("split_sizes", {})
    speakers = result["per_seed"][0].get("split_speakers", {})
    test_clips = f"{sizes['test']}-clip" if "test" in sizes else "test"
    lines = [
        "# Accuracy: Crab against the classical SER baselines on the spoken synthetic corpus",
        "",
        f"`python benchmarks/accuracy.py --seeds {seeds} --num {result['num']} --speakers {result['speakers']}`, "
        f"on {result['machine']['cpu']} "
        f"({result['machine']['cores']} cores), torch {result['machine']['versions'].get('torch', '?')}. "
        f"Corpus seeds {seeds.replace(',', ', ')}: {result['num']} clips each, espeak-ng speech, speaker-disjoint "
        f"splits ({', '.join(f'{n} {k}' for k, n in sizes.items())} clips in seed {result['per_seed'][0]['seed']}, "
        f"spoken by {', '.join(f'{n} {k}' for k, n in speakers.items())} speakers), transcripts by Whisper "
        "tiny.en. Each cell: the median over the "
        "seeds (min-max). Crab: `crab-rt train --recipe synthetic` (the first 2 layers of Whisper tiny.en's encoder, "
        "frozen; a random tiny RoBERTa); baselines: `crab-rt baseline`. The ceilings are those of a classifier that "
        "knows each clip's cue classes (naive Bayes with the train split's statistics): the best WAR in expectation, "
        f"which one {test_clips} split can miss (knowing both cues can score below knowing one).",
        "",
    ]
    for split in ("test", "dev"):
        lines += [f"## {split} split", "", "| model | UAR | WAR | macro-F1 |", "|---|---|---|---|"]
        for name in (*BASELINES, *MODELS, "provisional"):
            r = summary["rows"][name][split]
            lines.append(f"| {ROW_NAMES[name]} | {_cell(r['uar'])} | {_cell(r['war'])} | {_cell(r['macro_f1'])} |")
        for cue in ("prosody", "text", "both"):
            c = summary["ceilings"][cue][split]
            if c["uar"]["median"] is not None:
                lines.append(f"| ceiling: {cue} cues known exactly | {_cell(c['uar'])} | {_cell(c['war'])} | |")
        lines.append("")
    lines += ["## Calibrated confidence (Crab's run)", "",
              "Expected calibration error (15 bins) of the final events (Crab's head) and of the provisional "
              "ones (its voice-only classifier), before and after the temperature fitted on the dev split; "
              "median over the seeds (min-max). Reliability diagrams, pooled over the seeds: "
              f"`{result.get('name', 'accuracy')}_reliability_dev.png`, "
              f"`{result.get('name', 'accuracy')}_reliability_test.png`.", "",
              "| split | events | temperature | ECE before | ECE after |", "|---|---|---|---|---|"]
    for split in ("dev", "test"):
        for stage in ("final", "provisional"):
            c = summary["calibration"][split][stage]
            lines.append(f"| {split} | {stage} | {_cell(c['temperature'])} | {_cell(c['ece_before'])} | "
                         f"{_cell(c['ece_after'])} |")
    lines += ["", "Per seed, ECE before -> after (final; provisional), and the temperatures:", "",
              "| seed | dev | test | temperature (final; provisional) |", "|---|---|---|---|"]
    def pair(cal: dict, split: str) -> str:
        f, v = cal[split]["final"], cal[split]["provisional"]
        return f"{f['ece_before']:.3f} -> {f['ece_after']:.3f}; {v['ece_before']:.3f} -> {v['ece_after']:.3f}"

    for r in result["per_seed"]:
        cal = r["calibration"]
        lines.append(f"| {r['seed']} | {pair(cal, 'dev')} | {pair(cal, 'test')} | "
                     f"{cal['dev']['final']['temperature']:.3f}; {cal['dev']['provisional']['temperature']:.3f} |")
    lines.append("")
    lines += ["## The issue's inequalities (test UAR medians)", "", "| claim | medians | holds |", "|---|---|---|"]
    for c in summary["checks"]:
        lines.append(f"| {ROW_NAMES[c['row']]} >= {ROW_NAMES[c['against']]} | {c['uar']:.3f} vs "
                     f"{c['against_uar']:.3f} | {'yes' if c['holds'] else '**no**'} |")
    lines += ["", "Per seed (test UAR):", "", "| seed | " + " | ".join(ROW_NAMES[n] for n in (*BASELINES, *MODELS))
              + " |", "|---" * (1 + len(BASELINES) + len(MODELS)) + "|"]
    for r in result["per_seed"]:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r['rows'][n]['test']['uar']:.3f}"
                                                    for n in (*BASELINES, *MODELS)) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (*BASELINES, *MODELS)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, split in zip(axes, ("test", "dev")):
        med = [result["summary"]["rows"][n][split]["uar"]["median"] for n in names]
        low = [m - result["summary"]["rows"][n][split]["uar"]["min"] for m, n in zip(med, names)]
        high = [result["summary"]["rows"][n][split]["uar"]["max"] - m for m, n in zip(med, names)]
        colors = ["#9e9e9e"] * len(BASELINES) + ["#1f77b4", "#ff7f0e", "#2ca02c", "#8c564b"]
        ax.bar(range(len(names)), med, yerr=[low, high], capsize=4, color=colors)
        ax.axhline(0.25, color="k", lw=0.8, ls=":", label="chance (4 classes)")
        ax.set_xticks(range(len(names)), [ROW_NAMES[n] for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{split} split: UAR, median over seeds (bars: min-max)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("UAR")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/accuracy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="corpus seeds, comma-separated (default: 0,1,2)")
    p.add_argument("--num", type=int, default=320,
                   help="clips per corpus (default: 320: 226 train, 47 dev and 47 test clips)")
    p.add_argument("--speakers", type=int, default=32,
                   help="speakers per corpus (default: 32: 22 train, 5 dev and 5 test speakers; with 12, each "
                        "held-out split has 2, and which 2 moves a model's UAR by 10-20 points)")
    p.add_argument("--corpora", default="corpora", help="where the corpora are made and kept (default: corpora)")
    p.add_argument("--runs", default="runs/accuracy", help="where the models are trained and kept")
    p.add_argument("--fresh", action="store_true", help="retrain models that exist already")
    p.add_argument("--out-dir", default=None, help="results folder (default: benchmarks/results/<machine>)")
    p.add_argument("--name", default="accuracy", help="stem of the result files (default: accuracy)")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r} must be comma-separated integers")
    if not seeds or args.num < 40 or args.speakers < 3:
        p.error("--seeds needs at least one seed, --num at least 40 and --speakers at least 3")
    started = time.perf_counter()
    per_seed = [run_seed(s, args) for s in seeds]
    machine = describe_machine()
    out = results_dir(args.out_dir, machine)
    reliability_plots(per_seed, out, args.name)
    for r in per_seed:
        del r["_predictions"]  # probabilities: drawn above, not kept in the JSON
    result = {"num": args.num, "speakers": args.speakers, "name": args.name, "machine": machine, "per_seed": per_seed,
              "summary": summarize(per_seed), "seconds": round(time.perf_counter() - started, 1)}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / f"{args.name}.md").write_text(text)
    plot(result, out / f"{args.name}.png")
    print(text)
    print(f"results: {out / args.name}.md, .json, .png, _reliability_dev.png, _reliability_test.png "
          f"({result['seconds']:.0f} s)")
    return 0
