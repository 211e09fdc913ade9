"""The GPU check's results folder, gathered: `gpu_check.json`, `gpu_check.md` and PNG plots.

Reads what the parts of `benchmarks/gpu_check.sh` left in the folder (a part
cut short by its time limit leaves its `.jsonl` stream only, which is read in
place of its JSON) and writes one summary: the 4 s utterance's latency
(speech + text + head, batch 1) per backend and precision against the 5 ms
goal, where the time goes, the tests, the reduced-precision parity, training
step times with epoch and run estimates, and the machine. The files are meant
to be copied into `benchmarks/results/<machine>/` as they are.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["GOAL_MS", "load_parts", "summarize", "write_report"]

GOAL_MS = 5.0  # speech + text + head for a 4 s utterance, p50, batch 1, WavLM Large + RoBERTa Large (issue 15)
_REF = (1, 4.0, 32)  # batch, audio s, tokens of the goal


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    return rows


def _load_kind(folder: Path, kind: str) -> list[dict]:
    """Every `<kind>_<name>.json`, or for a part that did not finish, its `.jsonl` rows."""
    out = {}
    for path in sorted(folder.glob(f"{kind}_*.jsonl")):
        name = path.stem[len(kind) + 1:]
        out[name] = {"kind": kind, "part": name, "results": _read_jsonl(path), "complete": False}
    for path in sorted(folder.glob(f"{kind}_*.json")):
        payload = _read_json(path)
        if payload is None:
            continue
        name = path.stem[len(kind) + 1:]
        if not payload.get("results") and name in out:  # the JSON was written before the sweep started
            payload["results"] = out[name]["results"]
        out[name] = payload
    return list(out.values())


def _tests(folder: Path) -> dict:
    """Outcome of every test case in the junit XML files of the folder."""
    cases = []
    for path in sorted(folder.glob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for case in root.iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    lines = (node.get("message") or node.text or "").strip().splitlines()
                    message = lines[0][:300] if lines else ""
                    break
            cases.append({"file": path.name, "test": f"{case.get('classname', '')}::{case.get('name', '')}",
                          "outcome": outcome, "seconds": round(float(case.get("time") or 0), 2),
                          "message": message})
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    return {"counts": counts, "cases": cases}


def _parts(folder: Path) -> list[dict]:
    """parts.tsv rows written by gpu_check.sh: name, exit code, seconds, limit."""
    rows = []
    path = folder / "parts.tsv"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            cells = line.split("\t")
            if len(cells) >= 4:
                rc = int(cells[1]) if cells[1].lstrip("-").isdigit() else None
                status = {0: "ok", 124: "timed out", 137: "killed"}.get(rc, "failed") if rc is not None else cells[1]
                rows.append({"part": cells[0], "rc": rc, "seconds": float(cells[2] or 0), "limit_s": cells[3],
                             "status": status})
    return rows


def load_parts(folder: Path) -> dict:
    """Everything the parts wrote in `folder`."""
    return {"env": _read_json(folder / "env.json"), "parts": _parts(folder), "tests": _tests(folder),
            "models": _load_kind(folder, "models"), "train": _load_kind(folder, "train"),
            "chain": _read_json(folder / "chain_probe.json")}


def _p50(results: list[dict], backend: str, graph: str, batch: int, audio_s, tokens) -> float | None:
    for r in results:
        if (r["backend"], r["graph"], r["batch"], r["audio_s"], r["text_tokens"]) == (backend, graph, batch, audio_s,
                                                                                     tokens):
            return r["ms"]["p50"]
    return None


def _sums(part: dict) -> list[dict]:
    """speech + text + head p50 of every (backend, batch, audio length) of a models part, at its head's tokens."""
    settings = part.get("settings") or {}
    tokens = settings.get("head_text_tokens", _REF[2])
    results = part.get("results", [])
    rows = []
    keys = dict.fromkeys((r["backend"], r["batch"], r["audio_s"]) for r in results if r["graph"] == "speech_encoder")
    for backend, batch, audio_s in keys:
        speech = _p50(results, backend, "speech_encoder", batch, audio_s, None)
        text = _p50(results, backend, "text_encoder", batch, None, tokens)
        head = _p50(results, backend, "head", batch, audio_s, tokens)
        total = None if None in (speech, text, head) else round(speech + text + head, 3)
        rows.append({"part": part["part"], "backend": backend, "batch": batch, "audio_s": audio_s,
                     "text_tokens": tokens, "speech_ms": speech, "text_ms": text, "head_ms": head, "total_ms": total})
    return rows


def summarize(data: dict) -> list[dict]:
    """speech + text + head p50 per backend, batch and length of every models part; `meets_goal` is set on the
    goal's point (batch 1, 4 s, 32 tokens) and None elsewhere."""
    rows = []
    for part in data["models"]:
        for row in _sums(part):
            at_goal = (row["batch"], row["audio_s"], row["text_tokens"]) == _REF and row["total_ms"] is not None
            rows.append({**row, "meets_goal": row["total_ms"] <= GOAL_MS if at_goal else None})
    return rows


def _latency_table(part: dict) -> str:
    """p50 / p95 ms (n) of every point of a models part, one column per backend."""
    from crab_bench.report import markdown_table

    results = part.get("results", [])
    backends = list(dict.fromkeys(r["backend"] for r in results))
    cells: dict = {}
    for r in results:
        ms = r["ms"]
        cells.setdefault((r["graph"], r["batch"], r["audio_s"], r["text_tokens"]), {})[r["backend"]] = (
            f"{ms['p50']:.2f} / {ms.get('p95', ms.get('p90', float('nan'))):.2f} ({ms['n']})")
    rows = [[g, b, a, t, *(by.get(n) for n in backends)] for (g, b, a, t), by in cells.items()]
    return markdown_table(["graph", "batch", "audio s", "tokens", *backends], rows)


def _markdown(data: dict, goal: list[dict]) -> tuple[str, list[tuple[str, str]], list[str]]:
    from crab_bench.report import markdown_table

    sections = []
    at_goal = [g for g in goal if (g["batch"], g["audio_s"], g["text_tokens"]) == _REF]
    sections.append((f"The goal: speech + text + head p50 for a 4 s utterance, batch 1, 32 tokens, ms "
                     f"(goal {GOAL_MS:g} ms)", markdown_table(
                         ["part", "backend", "speech", "text", "head", "total", f"<= {GOAL_MS:g} ms"],
                         [[g["part"], g["backend"], g["speech_ms"], g["text_ms"], g["head_ms"], g["total_ms"],
                           {True: "yes", False: "no", None: "-"}[g["meets_goal"]]] for g in at_goal])))
    chain = data.get("chain")
    if chain:
        rows = [[w["way"], w.get("p50_ms"), w.get("p95_ms"), w.get("n"), w.get("max_abs_diff_vs_eager"),
                 w.get("error", "")] for w in chain.get("ways", [])]
        rows += [[way, None, None, None, None, f"not run: {why}"] for way, why in (chain.get("skipped") or {}).items()]
        sections.append((f"The whole chain as one call (chain_probe.json): preset {chain.get('preset')}, batch "
                         f"{chain.get('batch')}, {chain.get('audio_s'):g} s, {chain.get('text_tokens')} tokens, "
                         f"encoders {chain.get('precision')}, host copies included, ms",
                         markdown_table(["way", "p50", "p95", "n", "max abs diff vs eager", "note"], rows)))
    sections.append(("speech + text + head p50 at every batch and length (tokens: the head sweep's), ms",
                     markdown_table(["part", "backend", "batch", "audio s", "tokens", "speech", "text", "head",
                                     "total"],
                                    [[g["part"], g["backend"], g["batch"], g["audio_s"], g["text_tokens"],
                                      g["speech_ms"], g["text_ms"], g["head_ms"], g["total_ms"]] for g in goal])))
    sections.append(("Parts of the run", markdown_table(
        ["part", "status", "exit code", "seconds", "limit s"],
        [[p["part"], p["status"], p["rc"], p["seconds"], p["limit_s"]] for p in data["parts"]])))
    failed = [[m["part"], f["backend"], f["graph"], f["point"], f["error"]] for m in data["models"]
              for f in m.get("failures") or []]
    if failed:
        sections.append(("Graphs that failed (their later points were skipped)", markdown_table(
            ["part", "backend", "graph", "first failing point", "error"], failed)))
    tests = data["tests"]
    shown = [c for c in tests["cases"] if c["outcome"] != "passed"]
    body = "counts: " + (", ".join(f"{k} {v}" for k, v in sorted(tests["counts"].items())) or "no junit XML found")
    if shown:
        body += "\n\n" + markdown_table(["test", "outcome", "message"],
                                        [[c["test"], c["outcome"], c["message"]] for c in shown])
    sections.append(("Tests (failures, errors and skips listed)", body))
    parity_rows = [[m["part"], p, v.get("probabilities"), v.get("logits"), v.get("speech_hidden"), v.get("text_hidden"),
                    v.get("labels_equal"), v.get("samples")]
                   for m in data["models"] for p, v in (m.get("precision_parity") or {}).items()]
    if parity_rows:
        sections.append(("Reduced precision against fp32 (torch eager, encoders cast, head fp32): max abs diff; "
                         "hidden states relative to their largest magnitude",
                         markdown_table(["part", "precision", "probabilities", "logits", "speech hidden",
                                         "text hidden", "labels equal", "samples"], parity_rows)))
    train_rows, estimate_rows = [], []
    for part in data["train"]:
        for r in part.get("results", []):
            c = r.get("config", {})
            if "error" in r:
                train_rows.append([part["part"], c.get("preset"), c.get("amp"), c.get("micro_batch"), c.get("audio_s"),
                                   None, None, None, "error: " + r["error"]])
                continue
            peak = r.get("peak_memory_gib", {})
            train_rows.append([part["part"], c["preset"], r.get("amp_dtype") or "fp32", c["micro_batch"], c["audio_s"],
                               r["step_ms"]["p50"], r["samples_per_s"], peak.get("allocated"),
                               "finite" if r["losses_finite"] else "NOT finite"])
            for e in r.get("estimates", []):
                estimate_rows.append([part["part"], r.get("amp_dtype") or "fp32", c["audio_s"], e["set"], e["clips"],
                                      e["epoch_min"], e["run_h"]])
    if train_rows:
        sections.append(("Training: one optimizer step (4 micro-batches), synthetic batches", markdown_table(
            ["part", "preset", "precision", "micro-batch", "audio s", "step p50 ms", "samples/s", "peak GiB",
             "losses"], train_rows)))
    if estimate_rows:
        sections.append(("Training time estimates (training steps only; every clip padded to the audio length)",
                         markdown_table(["part", "precision", "audio s", "set", "clips", "epoch min", "run h"],
                                        estimate_rows)))
    for part in data["models"]:
        if part.get("results"):
            settings = part.get("settings") or {}
            head = (f"{part['part']}: p50 / p95 ms (n); warm-up {settings.get('warmup')} calls, up to "
                    f"{settings.get('repeat')} timed, at most {settings.get('max_seconds')} s a point")
            sections.append((head, _latency_table(part)))
    env = data["env"] or {}
    t = env.get("torch", {})
    code = env.get("code") or {}
    models = {(m.get("preset"), (m.get("bundle") or {}).get("speech_encoder"), (m.get("bundle") or {}).get(
        "text_encoder")) for m in data["models"] if m.get("preset")}
    notes = [f"GPU: {t.get('device', 'none')} (capability {t.get('capability')}, {t.get('memory_gib')} GiB); "
             f"torch {t.get('version')}, CUDA {t.get('cuda')}, cuDNN {t.get('cudnn')}; python {env.get('python')}; "
             f"transformers {(env.get('packages') or {}).get('transformers')}; fp32 matmul precision "
             f"{t.get('float32_matmul_precision')} (TF32: matrix products {t.get('matmul_allow_tf32')}, cuDNN "
             f"convolutions {t.get('cudnn_allow_tf32')}: torch's defaults, kept)",
             "models: " + ("; ".join(f"preset {p} ({s} + {x} + head)" for p, s, x in sorted(models, key=str))
                           or "none") + ", random weights built from configs in the device's memory (the compute "
             "of the pretrained models); bf16 / fp16: the encoders cast, the head fp32",
             "could not run here: " + ("; ".join(f"{k}: {v}" for k, v in (env.get("cannot_run") or {}).items())
                                       or "nothing listed"),
             f"crab-rt {code.get('crab_rt')} (git {code.get('git')})"]
    return "GPU check: CUDA paths, the paper's model, training steps", sections, notes


def _plots(folder: Path, data: dict, goal: list[dict]) -> list[Path]:
    from crab_bench.report import line_panels, stacked_bars

    paths = []
    complete = [g for g in goal if g["total_ms"] is not None and (g["batch"], g["audio_s"], g["text_tokens"]) == _REF]
    if complete:
        labels = [f"{g['backend']}\n({g['part']})" for g in complete]
        path = folder / "gpu_check_goal.png"
        stacked_bars(path, f"4 s utterance, batch 1, 32 tokens: p50 by graph (goal {GOAL_MS:g} ms)", labels,
                     {"speech": [g["speech_ms"] for g in complete], "text": [g["text_ms"] for g in complete],
                      "head": [g["head_ms"] for g in complete]})
        paths.append(path)
    batches = sorted({r["batch"] for m in data["models"] for r in m.get("results", [])})
    parts_of: dict[str, set] = {}
    for m in data["models"]:
        for r in m.get("results", []):
            parts_of.setdefault(r["backend"], set()).add(m["part"])
    for batch in batches:
        panels = []
        for graph, axis, xlabel in (("speech_encoder", "audio_s", "audio (s)"),
                                    ("text_encoder", "text_tokens", "tokens"),
                                    ("head", "audio_s", "audio (s), the sweep's head tokens")):
            series = {}
            for m in data["models"]:
                tokens = (m.get("settings") or {}).get("head_text_tokens", _REF[2])
                for r in m.get("results", []):
                    if r["graph"] != graph or r["batch"] != batch or (graph == "head" and r["text_tokens"] != tokens):
                        continue
                    # a backend measured by several parts (the eager fp32 reference) is one line per part
                    label = r["backend"] if len(parts_of[r["backend"]]) == 1 else f"{r['backend']} [{m['part']}]"
                    xs, ys = series.setdefault(label, ([], []))
                    xs.append(r[axis])
                    ys.append(r["ms"]["p50"])
            for key, (xs, ys) in series.items():
                order = sorted(range(len(xs)), key=xs.__getitem__)
                series[key] = ([xs[i] for i in order], [ys[i] for i in order])
            panels.append({"title": f"{graph} (batch {batch})", "xlabel": xlabel, "ylabel": "p50 ms", "series": series})
        if any(p["series"] for p in panels):
            path = folder / f"gpu_check_latency_batch{batch}.png"
            line_panels(path, f"latency vs length, batch {batch}", panels)
            paths.append(path)
    return paths


def write_report(folder: Path, plots: bool = True) -> list[Path]:
    """Write gpu_check.json, gpu_check.md and the PNGs into `folder`; returns their paths."""
    from crab_bench.report import write_json, write_markdown

    data = load_parts(folder)
    goal = summarize(data)
    written = [write_json(folder / "gpu_check.json", {"goal_ms": GOAL_MS, "goal": goal, **data})]
    title, sections, notes = _markdown(data, goal)
    written.append(write_markdown(folder / "gpu_check.md", title, sections, notes))
    if plots:
        try:
            written += _plots(folder, data, goal)
        except ImportError as e:  # matplotlib absent: the tables are still there
            notes.append(f"no plots: {e}")
    return written
