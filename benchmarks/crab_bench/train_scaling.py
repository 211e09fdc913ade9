"""Data-parallel training throughput: the same recipe in 1 process and in N (`crab-rt train --nproc-per-node N`).

A tiny Crab whose encoders train (random WavLM and RoBERTa tiny presets, 5 MPCL legs) on a spoken synthetic
corpus (`crab-rt synth --voice espeak`). Throughput is training clips per second over the epochs' training
time (`train_seconds` in metrics.jsonl: the steps, not the dev evaluation or start-up). Process counts are
alternated run by run; each cell is the median over `--runs` runs (min-max). On a CPU, N processes share the
machine's cores (each gets cores / N threads), so this measures what Gloo data parallelism costs or gains
there; a multi-GPU figure needs GPUs.
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

RECIPE = """\
[model]
speech_encoder = "random:wavlm-tiny"
text_encoder = "random:roberta-tiny"
max_audio_s = 4.0
max_text_tokens = 32
[model.head]
hidden_dim = 32
classifier_dim = 32
[data]
manifest = "{manifest}"
labels = ["neutral", "happy", "angry", "sad"]
cache_audio = true
[optim]
epochs = {epochs}
batch_size = 16
grad_accum_steps = 2
head_lr = 1e-3
encoder_lr = 1e-3
head_eta_min = 1e-4
encoder_eta_min = 1e-5
[loss]
leg_dim = 32
[run]
seed = 0
progress = false
"""


def _crab(*args: str) -> list[str]:
    return [sys.executable, "-m", "crab_rt.cli", *args]


def one_run(recipe: Path, out: Path, processes: int) -> dict:
    """Train once; the training clips per second and the wall time."""
    cmd = _crab("train", "--recipe", str(recipe), "--out", str(out), "--quiet")
    if processes > 1:
        cmd += ["--nproc-per-node", str(processes)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - started
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    from crab_rt.data.manifest import read_manifest

    clips = sum(1 for r in read_manifest(config["data"]["manifest"]) if r.split in config["data"]["train_splits"])
    seconds = sum(r["train_seconds"] for r in history)
    return {"processes": processes, "samples_per_s": round(clips * len(history) / seconds, 2),
            "train_seconds": round(seconds, 2), "wall_s": round(wall, 1), "final_train_loss": history[-1]["train_loss"]}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Data-parallel training throughput (Gloo, CPU)", "",
        f"`python benchmarks/train_scaling.py --processes {','.join(map(str, result['processes']))} "
        f"--runs {result['runs']} --num {result['num']} --epochs {result['epochs']}`, on {m.get('cpu')} "
        f"({m.get('cores')} cores), torch {m.get('versions', {}).get('torch')}. A tiny Crab with trainable random "
        "encoders (WavLM and RoBERTa tiny presets, 5 MPCL legs), global batch 16 in micro-batches of 8, on "
        f"{result['train_clips']} spoken training clips. Training clips per second over the epochs' training "
        "time; median over the runs (min-max), process counts alternated.", "",
        "| processes | clips/s | speed-up | training s | final train loss |", "|---|---|---|---|---|",
    ]
    base = result["summary"][str(result["processes"][0])]["samples_per_s"]["median"]
    for n in result["processes"]:
        s = result["summary"][str(n)]
        rate = s["samples_per_s"]
        lines.append(f"| {n} | {rate['median']:.1f} ({rate['min']:.1f}-{rate['max']:.1f}) | "
                     f"{rate['median'] / base:.2f}x | {s['train_seconds']['median']:.1f} | "
                     f"{s['final_train_loss']['median']:.4f} |")
    lines += ["", "Every process count trains the same model (`crab_rt.train.distributed`): the final losses agree "
              "to float summation order.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/train_scaling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", default="1,2", help="process counts, comma-separated (default: 1,2)")
    p.add_argument("--runs", type=int, default=3, help="runs per process count (default: 3)")
    p.add_argument("--num", type=int, default=160, help="clips in the corpus (default: 160)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    p.add_argument("--out-dir", default=None, help="results folder (default: benchmarks/results/<machine>)")
    p.add_argument("--name", default="train_scaling", help="stem of the result files (default: train_scaling)")
    args = p.parse_args(argv)
    try:
        processes = [int(x) for x in args.processes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--processes {args.processes!r} must be comma-separated integers")
    if not processes or min(processes) < 1 or args.runs < 1 or args.num < 40 or args.epochs < 1:
        p.error("--processes >= 1 each, --runs >= 1, --num >= 40 and --epochs >= 1")
    if any(2 % n for n in processes):
        p.error("the recipe accumulates 2 micro-batches per step: --processes may be 1 or 2")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crab-train-scaling-") as tmp:
        root = Path(tmp)
        subprocess.run(_crab("synth", "--out", str(root / "corpus"), "--num", str(args.num), "--seed", "0",
                             "--voice", "espeak", "--quiet"), check=True)
        recipe = root / "recipe.toml"
        recipe.write_text(RECIPE.format(manifest=root / "corpus" / "manifest.csv", epochs=args.epochs))
        runs = []
        for i in range(args.runs):
            for n in processes:
                run = one_run(recipe, root / f"run{i}-{n}", n)
                print(f"run {i + 1}/{args.runs}, {n} process(es): {run['samples_per_s']} clips/s", flush=True)
                runs.append(run)
        from crab_rt.data.manifest import read_manifest

        train_clips = sum(1 for r in read_manifest(root / "corpus" / "manifest.csv") if r.split == "train")
    summary = {str(n): {key: spread([r[key] for r in runs if r["processes"] == n])
                        for key in ("samples_per_s", "train_seconds", "wall_s", "final_train_loss")}
               for n in processes}
    machine = describe_machine()
    result = {"processes": processes, "runs": args.runs, "num": args.num, "epochs": args.epochs,
              "train_clips": train_clips, "machine": machine, "per_run": runs, "summary": summary,
              "seconds": round(time.perf_counter() - started, 1)}
    out = results_dir(args.out_dir, machine)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / f"{args.name}.md").write_text(text)
    print(text)
    print(f"results: {out / args.name}.md, .json ({result['seconds']:.0f} s)")
    return 0
