"""`crab-rt doctor`: one screen that says what this machine can run, and why not."""

from __future__ import annotations

import argparse
import json
import textwrap

_WIDTH = 22  # name column of the Backends and Pipeline tables


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `doctor` subcommand."""
    parser = subparsers.add_parser(
        "doctor", parents=[common],
        help="say what this machine can run: ONNX Runtime build, CUDA, TensorRT, ASR, VAD, microphones",
        description=(
            "Report Python and package versions, the ONNX Runtime build and its providers, CUDA devices (via "
            "cuda-python, NVML, nvidia-smi, torch or CTranslate2, whichever is installed), TensorRT, CTranslate2's "
            "CUDA support and compute types, the ASR models available offline and PortAudio's input devices; then, "
            "per backend (onnxruntime-cpu, onnxruntime-cuda, onnxruntime-tensorrt, tensorrt, torch-cpu, torch-cuda) "
            "and pipeline stage (vad, asr-cpu, asr-cuda, microphone), whether it is usable here, and if not why "
            "and the fix. With --bundle, also the bundle's graphs and whether its TensorRT engines match this GPU "
            "and TensorRT. Exit 0 when the requested configuration can run (the onnxruntime CPU backend; with "
            "--gpu N a GPU backend on device N; both with the Silero VAD), 1 otherwise. --json prints the report "
            "as one JSON object (its shape is documented in crab_rt/doctor.py)."
        ),
    )
    parser.add_argument("--bundle", help="also check this bundle folder: its graphs, torch weights, TensorRT engines")
    parser.add_argument("--gpu", type=_gpu_index, metavar="N",
                        help="ask for a GPU backend on CUDA device N (default: the onnxruntime CPU backend)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    parser.set_defaults(func=run)


def _gpu_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU index (0, 1, ...)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a GPU index is >= 0, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Print the report; returns 0 when the requested configuration can run, else 1."""
    from crab_rt.doctor import diagnose

    report = diagnose(args.bundle, args.gpu)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report.to_dict()))
    return 0 if report.ok else 1


def _row(name: str, text: str, width: int = 14) -> str:
    return f"  {name:<{width}}{text}"


def _wrapped(text: str, indent: int, hang: int = 2) -> list[str]:
    """`text` wrapped at 118 columns, indented by `indent`, continuation lines by `indent + hang`."""
    return textwrap.wrap(text, width=118, initial_indent=" " * indent, subsequent_indent=" " * (indent + hang),
                         break_on_hyphens=False, break_long_words=False) or [" " * indent]


def render(report: dict) -> str:
    """The text report of `Report.to_dict()`."""
    system, ort, cuda, trt, ct2 = (report[k] for k in ("system", "onnxruntime", "cuda", "tensorrt", "ctranslate2"))
    out = [f"crab-rt doctor {report['packages']['crab-rt']}: what this machine can run", "", "System",
           _row("python", f"{system['python']}  {system['executable']}"),
           _row("platform", f"{system['platform']} ({system['machine']})"),
           _row("jetson", system["jetson"] or "no")]
    present = [f"{n} {v}" for n, v in report["packages"].items() if v and n != "crab-rt"]
    absent = [n for n, v in report["packages"].items() if not v]
    out += ["Packages", *_wrapped(", ".join(present), 2)]
    if absent:
        out += _wrapped("not installed: " + ", ".join(absent), 2)
    out.append("ONNX Runtime")
    if ort["error"]:
        out += _wrapped("not installed (pip install 'crab-rt[cpu]' or 'crab-rt[gpu]', or bring your own build)"
                        if ort["error"] == "not installed" else ort["error"], 2)
    else:
        builds = " + ".join(ort["distributions"]) or "onnxruntime (no distribution metadata)"
        out += [_row("build", f"{builds} {ort['version']}"), _row("providers", ", ".join(ort["providers"]))]
        if len(ort["distributions"]) > 1:
            out.append(_row("WARNING", "several ONNX Runtime builds share one onnxruntime module (see the fix below)"))
    devices = cuda["devices"]
    if devices or cuda["count"] == 0:
        out.append("CUDA devices" + ("" if devices else "  none"))
    else:
        out.append("CUDA devices  none found (no source below could ask the driver)")
    for d in devices:
        cc = f", sm{d['compute_capability'].replace('.', '')}" if d.get("compute_capability") else ""
        memory = f", {d['memory_mib'] / 1024:.0f} GiB" if d.get("memory_mib") else ""
        out.append(_row(f"cuda:{d['index']}", f"{d['name']}{cc}{memory}"))
    out += [_row(source, said) for source, said in cuda["sources"].items()]
    out.append(f"TensorRT      {trt['error'] or trt['version']}")
    if ct2["error"]:
        out.append(f"CTranslate2   {ct2['error']}")
    else:
        types = "; ".join(f"{dev}: {', '.join(t)}" for dev, t in ct2["compute_types"].items() if t)
        out.append(f"CTranslate2   {ct2['version']}, {ct2['cuda_devices']} CUDA device(s); compute types {types}")
    out.append("ASR models available offline" + ("" if report["asr_models"] else ": none"))
    for m in report["asr_models"]:
        out += _wrapped(f"{m['name']}: {m['error'] or m['source'] + ', ' + str(m['path'])}", 2)
    mics = report["microphones"]
    out += _wrapped("Microphones (PortAudio)" + ("" if mics["devices"] else f": {mics['error'] or 'no input device'}"),
                    0)
    for d in mics["devices"]:
        mark = " (default)" if d.get("is_default") else ""
        out.append(_row(f"{d['index']}", f"{d['name']}, {d['default_sample_rate']:.0f} Hz, "
                                         f"{d['max_input_channels']} ch{mark}", 6))
    for group, title in (("backend", "Backends"), ("pipeline", "Pipeline")):
        out.append(title)
        for c in (c for c in report["checks"] if c["group"] == group):
            status = "usable" if c["usable"] else "NOT USABLE"
            out += _wrapped(f"{c['name']:<{_WIDTH}}{status:<12}{c['detail']}", 2, _WIDTH + 12)
            if c["fix"]:
                out += _wrapped(f"fix: {c['fix']}", 2 + _WIDTH + 12, 5)
    if report["bundle"] is not None:
        out += _render_bundle(report["bundle"])
    verdict = report["requested"]
    out += ["", *_wrapped(("OK: " if verdict["ok"] else "NO: ") + verdict["summary"], 0, 4)]
    return "\n".join(out)


def _render_bundle(bundle: dict) -> list[str]:
    out = [f"Bundle {bundle['path']}"]
    if bundle["error"]:
        return out + _wrapped(f"cannot load: {bundle['error']}", 2)
    graphs = "; ".join(f"{g} {', '.join(p)}" for g, p in bundle["graphs"].items())
    out += [_row("graphs", graphs), _row("torch weights", "yes" if bundle["torch_weights"] else "no (onnxruntime "
                                                                                               "and tensorrt only)")]
    if not bundle["engines"]:
        out.append(_row("engines", "none built (crab-rt build-engines on the target GPU)"))
    for e in bundle["engines"]:
        out += _wrapped(f"engines {e['key']}: {e['status']} ({e['gpu_name']}, TensorRT {e['tensorrt_version']}, "
                        f"{e['precision']}){': ' + e['detail'] if e['detail'] else ''}", 2)
    return out
