"""The parts of `benchmarks/gpu_check.sh`: one measurement each, run as its own process.

`python -m crab_bench.gpu_check PART --out DIR ...`, PART one of:

- `env`: the machine, torch, CUDA and what cannot run here (`env.json`);
- `models`: latency of the three graphs on one torch backend at one or more
  precisions, the model built in the device's memory with random weights
  (no bundle export: the large bundle takes minutes to write);
  `models_<name>.json`, and `models_<name>.jsonl` growing one line per point;
- `train`: training step time and peak memory (`train_step.py`);
  `train_<name>.json` and `.jsonl`;
- `report`: everything in DIR gathered into `gpu_check.json`, `.md` and PNGs
  (`gpu_report.py`).

Each part writes as it goes, so a part stopped by its time limit leaves what
it measured; the shell script gives each part its own limit.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

from crab_bench.common import parse_names
from crab_bench.stats import parse_list
from crab_rt.errors import CrabError

__all__ = ["main", "env_facts", "run_models", "run_train", "stamp"]

_T0 = time.time()


def stamp(message: str) -> None:
    """One progress line, with the wall-clock time and the seconds since this process started."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - _T0:6.1f}s] {message}", flush=True)


def _write_json(path: Path, payload: dict) -> Path:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")


# --------------------------------------------------------------------------- env
def env_facts() -> dict:
    """What the results depend on: machine, versions, CUDA device, and which GPU backends cannot run here."""
    import platform

    from crab_bench.common import code_version
    from crab_bench.machine import describe_machine, machine_slug

    machine = describe_machine()
    facts: dict = {"machine": machine, "slug": machine_slug(machine), "code": code_version(),
                   "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch
    except ImportError as e:
        facts["torch"] = {"error": str(e)}
    else:
        t: dict = {"version": torch.__version__, "cuda": torch.version.cuda,
                   "cuda_available": torch.cuda.is_available(),
                   "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                   "float32_matmul_precision": torch.get_float32_matmul_precision(),
                   "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                   "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                   "threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            t.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                     memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                     bf16_supported=torch.cuda.is_bf16_supported(), device_count=torch.cuda.device_count())
        facts["torch"] = t
    from importlib import metadata

    versions = {}
    for package in ("transformers", "tokenizers", "onnx", "onnxruntime", "onnxruntime-gpu", "triton", "numpy",
                    "tensorrt", "ctranslate2", "faster-whisper", "soundfile", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    facts["packages"] = versions
    from crab_bench.models import _available

    facts["cannot_run"] = {k: v for k, v in _available(["onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"]).items()
                           if v}
    return facts


def run_env(args: argparse.Namespace) -> int:
    facts = env_facts()
    t = facts.get("torch", {})
    stamp(f"python {facts['python']}, torch {t.get('version')} (CUDA {t.get('cuda')}, cuDNN {t.get('cudnn')}), "
          f"transformers {facts['packages'].get('transformers')}")
    stamp(f"device: {t.get('device', 'no CUDA device')} capability {t.get('capability')} memory "
          f"{t.get('memory_gib')} GiB, bf16 {t.get('bf16_supported')}; results folder name {facts['slug']}")
    for name, why in facts["cannot_run"].items():
        stamp(f"cannot run here: {name}: {why}")
    _write_json(Path(args.out) / "env.json", facts)
    return 0


# --------------------------------------------------------------------------- models
def run_models(args: argparse.Namespace) -> int:
    """Latency sweep of one torch backend at each precision (see the module docstring)."""
    import warnings

    import torch

    from crab_bench.bundles import PRESETS, build_bench_model
    from crab_bench.models import TORCH_BACKENDS, ModelsBenchConfig, settings_record, sweep
    from crab_rt.audio import SAMPLE_RATE
    from crab_rt.backends.torch import TORCH_COMPILE_MODES, precision_parity, torch_sessions
    from crab_rt.errors import BackendError

    warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
    out = Path(args.out)
    device, mode = TORCH_BACKENDS[args.backend]
    precisions = list(args.precisions)
    config = ModelsBenchConfig(preset=args.preset, backends=(args.backend,), audio_s=tuple(args.audio_s),
                               text_tokens=tuple(args.text_tokens), batch=tuple(args.batch),
                               head_text_tokens=args.head_text_tokens, ref_audio_s=args.ref_audio_s,
                               warmup=args.warmup, repeat=args.repeat, max_seconds=args.max_seconds,
                               precision=precisions[0], seed=args.seed, plots=False, quiet=True)
    config.validate()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"{args.backend} needs a CUDA device and torch sees none")
    stream = out / f"models_{args.name}.jsonl"
    stream.unlink(missing_ok=True)
    started = time.perf_counter()
    stamp(f"models {args.name}: building the {args.preset} model on {device}")
    base = build_bench_model(args.preset, args.seed, device)
    stamp(f"models {args.name}: built in {time.perf_counter() - started:.1f} s, "
          f"{sum(base.parameter_counts().values()) / 1e6:.0f} M parameters")
    frames = {a: int(base.speech_encoder.frame_lengths(torch.tensor([int(round(a * SAMPLE_RATE))]))[0])
              for a in sorted(set(config.audio_s) | {config.ref_audio_s})}
    dims = {"speech_hidden": base.speech_encoder.hidden_size, "text_hidden": base.text_encoder.hidden_size}
    dynamic = args.dynamic_shapes and mode in TORCH_COMPILE_MODES
    wanted = [(f"{args.backend}{'-dynamic' if dynamic else ''}-{p}", mode, p) for p in precisions]
    if args.reference and mode != "none":  # eager fp32 first: the others' outputs are compared with it
        wanted.insert(0, (f"torch-{'cpu' if device == 'cpu' else 'cuda'}-fp32", "none", "fp32"))
    loaded, backends, skipped = {}, [], []
    for name, compile_mode, precision in wanted:
        model = base if precision == "fp32" else copy.deepcopy(base)
        symbolic = dynamic and compile_mode != "none"  # (the eager reference has nothing to compile)
        try:
            loaded[name] = torch_sessions(model, device, compile_mode, precision, symbolic)
        except (CrabError, RuntimeError) as e:
            skipped.append({"backend": name, "reason": str(e).splitlines()[0]})
            stamp(f"models {args.name}: skip {name}: {e}")
            continue
        backends.append({"backend": name, "provider": loaded[name]["head"].provider, "device": device,
                         "precision": precision, "compile": compile_mode, "dynamic_shapes": symbolic})
    parity = {}
    eager = {b["precision"]: loaded[b["backend"]] for b in backends if b["compile"] == "none"}
    if "fp32" in eager:  # each reduced precision of the sweep, and those asked for, against fp32 (eager)
        for precision in dict.fromkeys([p for p in eager if p != "fp32"] + [p for p in args.parity if p != "fp32"]):
            sessions = eager.get(precision) or torch_sessions(copy.deepcopy(base), device, "none", precision)
            parity[precision] = precision_parity(eager["fp32"], sessions, args.seed)
            stamp(f"models {args.name}: {precision} vs fp32 parity {parity[precision]}")
            del sessions
    payload = {"kind": "models", "part": args.name, "preset": args.preset,
               "bundle": {"speech_encoder": PRESETS[args.preset][0], "text_encoder": PRESETS[args.preset][1],
                          "parameters": base.parameter_counts(), "built": "in memory, random weights (no bundle)"},
               "settings": settings_record(config), "backends": backends, "skipped": skipped,
               "precision_parity": parity}
    _write_json(out / f"models_{args.name}.json", {**payload, "complete": False})

    def on_result(row: dict) -> None:
        _append_jsonl(stream, row)

    measured = sweep(config, loaded, dims, frames, stamp, on_result)
    payload.update(measured, wall_s=round(time.perf_counter() - started, 1), complete=True)
    if device.startswith("cuda"):
        payload["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    _write_json(out / f"models_{args.name}.json", payload)
    stamp(f"models {args.name}: done in {payload['wall_s']} s")
    return 0


# --------------------------------------------------------------------------- train
def run_train(args: argparse.Namespace) -> int:
    """Training step time for each (amp, audio length), one model reused (see train_step.py)."""
    import warnings

    from crab_bench.train_step import TrainStepConfig, build_model, epoch_estimates, measure_train_step
    from crab_rt.backends.torch import torch_cuda_available
    from crab_rt.errors import BackendError
    from crab_rt.train.config import load_recipe

    warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
    if args.device.startswith("cuda") and not torch_cuda_available():
        raise BackendError(f"--device {args.device} needs a CUDA device and torch sees none")
    out = Path(args.out)
    stream = out / f"train_{args.name}.jsonl"
    stream.unlink(missing_ok=True)
    configs = [TrainStepConfig(preset=args.preset, recipe=args.recipe, micro_batch=args.micro_batch, audio_s=a,
                               text_tokens=args.text_tokens, amp=amp, device=args.device,
                               warmup_steps=args.warmup_steps, steps=args.steps, seed=args.seed).validate()
               for amp in args.amp for a in args.audio_s]
    epochs = load_recipe(args.recipe).optim.epochs
    started = time.perf_counter()
    stamp(f"train {args.name}: building the {args.preset} model ({args.recipe} recipe) on {args.device}")
    model = build_model(configs[0])
    stamp(f"train {args.name}: built in {time.perf_counter() - started:.1f} s")
    results = []
    for config in configs:
        try:
            row = measure_train_step(config, model, stamp)
            row["estimates"] = epoch_estimates(row["samples_per_s"], epochs)
            stamp(f"train {args.name}: {config.amp} {config.audio_s:g} s: step p50 {row['step_ms']['p50']} ms, "
                  f"{row['samples_per_s']} samples/s, peak {row.get('peak_memory_gib')}, "
                  f"losses finite {row['losses_finite']}")
        except Exception as e:  # noqa: BLE001 - one setting failing (out of memory, say) must not lose the others
            row = {"config": dataclasses.asdict(config), "error": f"{type(e).__name__}: {str(e).splitlines()[0]}",
                   "traceback": traceback.format_exc(limit=6)}
            stamp(f"train {args.name}: {config.amp} {config.audio_s:g} s FAILED: {row['error']}")
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass
        results.append(row)
        _append_jsonl(stream, row)
    payload = {"kind": "train", "part": args.name, "preset": args.preset, "recipe": args.recipe, "epochs": epochs,
               "results": results, "wall_s": round(time.perf_counter() - started, 1)}
    _write_json(out / f"train_{args.name}.json", payload)
    return 0 if all("error" not in r for r in results) else 1


# --------------------------------------------------------------------------- command line
def _floats(text: str) -> list[float]:
    return parse_list(text, float)


def _ints(text: str) -> list[int]:
    return parse_list(text, int)


def build_parser() -> argparse.ArgumentParser:
    from crab_bench.models import TORCH_BACKENDS
    from crab_bench.train_step import AMP_CHOICES

    p = argparse.ArgumentParser(prog="python -m crab_bench.gpu_check", description=__doc__.split("\n\n")[0])
    parts = p.add_subparsers(dest="part", required=True)
    for name in ("env", "models", "train", "report"):
        sp = parts.add_parser(name)
        sp.add_argument("--out", required=True, help="results folder (made if absent)")
    models = parts.choices["models"]
    models.add_argument("--name", required=True, help="file name part: models_<name>.json")
    models.add_argument("--preset", default="large")
    models.add_argument("--backend", default="torch-cuda", choices=sorted(TORCH_BACKENDS))
    models.add_argument("--precisions", type=parse_names, default=["fp32", "bf16"])
    models.add_argument("--batch", type=_ints, default=[1, 4, 8])
    models.add_argument("--audio-s", type=_floats, default=[1.0, 2.0, 4.0, 8.0, 12.0])
    models.add_argument("--text-tokens", type=_ints, default=[8, 32, 128])
    models.add_argument("--head-text-tokens", type=int, default=32)
    models.add_argument("--ref-audio-s", type=float, default=4.0)
    models.add_argument("--warmup", type=int, default=3)
    models.add_argument("--repeat", type=int, default=30)
    models.add_argument("--max-seconds", type=float, default=1.0)
    models.add_argument("--seed", type=int, default=0)
    models.add_argument("--reference", action="store_true", help="also run eager fp32 and compare with it")
    models.add_argument("--dynamic-shapes", action="store_true",
                        help="compile modes: symbolic batch and length (a few compiles for the whole sweep) instead "
                             "of one compile per shape; the backend's name gets '-dynamic'")
    models.add_argument("--parity", type=parse_names, default=[],
                        help="precisions to compare with fp32 (eager) besides the sweep's own, e.g. fp16")
    train = parts.choices["train"]
    train.add_argument("--name", required=True, help="file name part: train_<name>.json")
    train.add_argument("--preset", default="large")
    train.add_argument("--recipe", default="iemocap")
    train.add_argument("--device", default="cuda:0")
    train.add_argument("--micro-batch", type=int, default=8)
    train.add_argument("--audio-s", type=_floats, default=[12.0])
    train.add_argument("--text-tokens", type=int, default=128)
    train.add_argument("--amp", type=parse_names, default=["bf16"], help=f"comma list of {', '.join(AMP_CHOICES)}")
    train.add_argument("--warmup-steps", type=int, default=1)
    train.add_argument("--steps", type=int, default=3)
    train.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.part == "report":
        from crab_bench.gpu_report import write_report

        for path in write_report(Path(args.out)):
            stamp(f"wrote {path}")
        return 0
    run = {"env": run_env, "models": run_models, "train": run_train}[args.part]
    try:
        return run(args)
    except CrabError as e:
        stamp(f"{args.part}: error: {e}")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
