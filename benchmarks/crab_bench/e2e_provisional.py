"""End of speech to the provisional event and to the final one, over separate e2e runs (issue 25's measurement).

Runs `python benchmarks/e2e.py` (the base preset, Whisper tiny.en int8 with its 30 s window, a conversation
spoken by espeak-ng, at real time) `--runs` times with provisional events on and as many times off, alternating,
each in a fresh process; keeps each run's result files (`e2e_base_<tag>-provisional-runN` and
`-final-only-runN`) and writes a summary: the medians over the runs (min-max) of the provisional and final
end_to_event p50 and p95, the provisional p50 as a share of the final p50 (goal: at most 0.45), and the final
p50 with provisional events off, to show that the provisional stage does not delay the final one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from crab_bench.machine import describe_machine, results_dir
from crab_bench.stats import spread

GOAL_SHARE = 0.45


def _run(tag: str, provisional: bool, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "e2e.py"), "--preset", "base", "--asr",
           args.asr, "--asr-compute-type", "int8", "--voice", "espeak", "--duration-s", str(args.duration_s),
           "--tag", tag, "--out-dir", str(out), "--quiet", *(["--bundle", args.bundle] if args.bundle else [])]
    if provisional:
        cmd.append("--provisional")
    print("$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / f"e2e_{'bundle' if args.bundle else 'base'}_{tag}.json").read_text())


def summarize(runs: dict[str, list[dict]]) -> dict:
    on, off = runs["provisional"], runs["final_only"]
    rows = {
        "provisional_p50": [r["provisional"]["latency_ms"]["end_to_event"]["p50"] for r in on],
        "provisional_p95": [r["provisional"]["latency_ms"]["end_to_event"]["p95"] for r in on],
        "final_p50": [r["latency_ms"]["end_to_event"]["p50"] for r in on],
        "final_p95": [r["latency_ms"]["end_to_event"]["p95"] for r in on],
        "share": [r["provisional"]["p50_share_of_final"] for r in on],
        "final_only_p50": [r["latency_ms"]["end_to_event"]["p50"] for r in off],
        "final_only_p95": [r["latency_ms"]["end_to_event"]["p95"] for r in off],
    }
    summary = {k: spread(v) for k, v in rows.items()}
    summary["goal_share"] = GOAL_SHARE
    summary["goal_met"] = summary["share"]["median"] <= GOAL_SHARE
    summary["utterances"] = [r["utterances"] for r in on + off]
    return summary


def _cell(s: dict, digits: int = 0) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def markdown(result: dict) -> str:
    s, m = result["summary"], result["machine"]
    model = ("the base preset (random-weight wavlm-base-plus + roberta-base bundle, int8 encoders on ONNX "
             "Runtime)")
    if result.get("bundle"):
        model = f"the bundle {result['bundle']} (its trained graphs, ONNX Runtime on the CPU)"
    return "\n".join([
        "# Provisional and final events, end to end", "",
        f"`python benchmarks/e2e_provisional.py --runs {result['runs']} --asr {result['asr']}"
        f"{' --bundle ' + result['bundle'] if result.get('bundle') else ''}`, on {m.get('cpu')} "
        f"({m.get('cores')} cores), torch {m.get('versions', {}).get('torch')}. Each run: `benchmarks/e2e.py` with "
        f"{model}, "
        f"Whisper {result['asr']} int8 with its 30 s window, a {result['duration_s']:g} s conversation spoken by "
        "espeak-ng, at real time, in a fresh process; provisional events on and off alternated. Each cell: the "
        "median over the runs of the run's percentile (min-max), in ms from the end of speech.", "",
        "| | p50 | p95 |", "|---|---|---|",
        f"| provisional event (voice only) | {_cell(s['provisional_p50'])} | {_cell(s['provisional_p95'])} |",
        f"| final event, provisional on | {_cell(s['final_p50'])} | {_cell(s['final_p95'])} |",
        f"| final event, provisional off | {_cell(s['final_only_p50'])} | {_cell(s['final_only_p95'])} |", "",
        f"Provisional p50 as a share of the final p50: {_cell(s['share'], 3)}; goal at most {GOAL_SHARE}: "
        f"**{'met' if s['goal_met'] else 'missed'}**. Utterances per run: {s['utterances']}.", "",
        "Run files: " + ", ".join(f"`{name}`" for name in result["files"]) + ".", "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/e2e_provisional.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs with provisional events on, and as many off (default 3)")
    p.add_argument("--asr", default="tiny.en", help="faster-whisper model (default tiny.en, from the [demo] extra)")
    p.add_argument("--duration-s", type=float, default=60.0, help="conversation length per run (default 60)")
    p.add_argument("--tag", default="whisper-tiny.en", help="run file tag (default whisper-tiny.en)")
    p.add_argument("--bundle", default=None, help="run this bundle instead of the base preset (e.g. demo/bundle)")
    p.add_argument("--name", default="e2e_provisional", help="stem of the summary files (default e2e_provisional)")
    p.add_argument("--out-dir", default=None, help="results folder (default: benchmarks/results/<machine>)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.duration_s < 10:
        p.error("--runs must be >= 1 and --duration-s >= 10")
    started = time.perf_counter()
    machine = describe_machine()
    out = results_dir(args.out_dir, machine)
    runs: dict[str, list[dict]] = {"provisional": [], "final_only": []}
    files = []
    for i in range(1, args.runs + 1):
        for key, on, suffix in (("provisional", True, "provisional"), ("final_only", False, "final-only")):
            tag = f"{args.tag}-{suffix}-run{i}"
            runs[key].append(_run(tag, on, args, out))
            files.append(f"e2e_{'bundle' if args.bundle else 'base'}_{tag}.md")
    result = {"runs": args.runs, "asr": args.asr, "duration_s": args.duration_s, "machine": machine,
              "bundle": args.bundle,
              "summary": summarize(runs), "files": files, "seconds": round(time.perf_counter() - started, 1)}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / f"{args.name}.md").write_text(text)
    print(text)
    return 0
