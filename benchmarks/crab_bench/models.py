"""`python benchmarks/models.py`: latency of speech encoder, text encoder and head, per backend.

One random-weight bundle of the preset is loaded on every backend present (all
at once; the backends take turns point by point, so a change in the machine's
load over the run hits them alike); every backend gets the SAME inputs (generated once from a
seed). For each graph and shape: untimed warm-up calls, then timed calls
(p50/p90/p99/mean over `n`, reported). Threads are pinned: ONNX Runtime's
intra-op threads and `torch.set_num_threads` get the same value. Ratios
between backends are computed from this run only. Outputs of every backend are
compared with the first backend's (max abs difference), since the bundle is
exported without its parity check.

`sweep` is the timing loop alone, for sessions built elsewhere (the GPU check
builds the large model in GPU memory instead of exporting a bundle).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
from pathlib import Path

import numpy as np

from crab_bench.bundles import PRESETS
from crab_bench.common import (
    CommonBenchConfig,
    add_common_arguments,
    add_list_option,
    add_spinning_argument,
    check_choice,
    check_names,
    check_range,
    finish_run,
    parse_names,
    resolve_threads,
    start_run,
)
from crab_rt.audio import SAMPLE_RATE
from crab_rt.cli._options import add_config_option
from crab_rt.errors import ConfigError, CrabError

__all__ = ["CONFIG", "ModelsBenchConfig", "add_arguments", "run", "sweep", "BACKENDS", "TORCH_BACKENDS", "load_backend",
           "combined_p50"]

BACKENDS = ("torch-cpu", "torch-cpu-compile", "onnxruntime-cpu", "torch-cuda", "torch-cuda-compile",
            "torch-cuda-graphs", "torch-cuda-capture", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
# fp32: every graph fp32 (onnxruntime-cpu runs the bundle's int8 encoders when it has them, as the runtime does)
ORT_VARIANTS = ("fused", "int8", "fp32")
# bf16: the torch backends only (crab_rt.backends.torch); ONNX Runtime and TensorRT run fp32 or fp16 graphs.
PRECISIONS = ("fp32", "fp16", "bf16")
# bench backend -> (torch device, torch.compile mode)
TORCH_BACKENDS = {
    "torch-cpu": ("cpu", "none"), "torch-cpu-compile": ("cpu", "inductor"), "torch-cuda": ("cuda:0", "none"),
    "torch-cuda-compile": ("cuda:0", "inductor"), "torch-cuda-graphs": ("cuda:0", "cuda-graphs"),
    "torch-cuda-capture": ("cuda:0", "capture"),
}
_MAIN_OUTPUT = {"speech_encoder": "hidden_states", "text_encoder": "hidden_states", "head": "probabilities"}


@dataclasses.dataclass(frozen=True)
class ModelsBenchConfig(CommonBenchConfig):
    """Options of `models` (and of CommonBenchConfig).

    Attributes:
        preset: model sizes, one of PRESETS: "tiny", "base" (wavlm-base-plus + roberta-base) or "large".
        backends: backends to time, from BACKENDS (default: all); those absent here are skipped with the reason.
        audio_s: audio lengths of the speech encoder and head sweeps, seconds.
        text_tokens: text lengths of the text encoder sweep, tokens.
        batch: batch sizes.
        head_text_tokens: text length of the head-vs-audio sweep and of the combined ratio, tokens.
        ref_audio_s: audio length of the combined ratio, seconds.
        warmup: untimed calls per point.
        repeat: timed calls per point (at most).
        max_seconds: a point stops after this many timed seconds, keeping >= 3 calls; 0 = never.
        precision: "fp32", "fp16" or "bf16" (torch backends only), of the GPU backends; the CPU backends run fp32.
        ort_variants: ONNX Runtime CPU variants of the encoder graphs to time as well: "fused", "int8".
        ort_spinning: let idle ONNX Runtime CPU threads spin.
    """

    preset: str = "base"
    backends: tuple[str, ...] = BACKENDS
    audio_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 12.0)
    text_tokens: tuple[int, ...] = (8, 32, 128)
    batch: tuple[int, ...] = (1, 4)
    head_text_tokens: int = 32
    ref_audio_s: float = 4.0
    warmup: int = 2
    repeat: int = 20
    max_seconds: float = 8.0
    precision: str = "fp32"
    ort_variants: tuple[str, ...] = ()
    ort_spinning: bool = False

    def validate(self) -> None:
        super().validate()
        check_choice("--preset", self.preset, PRESETS)
        check_names("--backends", self.backends, BACKENDS, "backend")
        check_names("--ort-variants", self.ort_variants, ORT_VARIANTS, "variant")
        if not self.backends and not self.ort_variants:
            raise ConfigError("--backends: no backend to time (give at least one, or 'all')")
        check_range("--audio-s", self.audio_s, 0.1)
        check_range("--text-tokens", self.text_tokens, 1)
        check_range("--batch", self.batch, 1)
        check_range("--head-text-tokens", self.head_text_tokens, 1)
        check_range("--ref-audio-s", self.ref_audio_s, 0.1)
        check_range("--warmup", self.warmup, 0)
        check_range("--repeat", self.repeat, 1)
        check_range("--max-seconds", self.max_seconds, 0, note=" (0 = never)")
        check_choice("--precision", self.precision, PRECISIONS)


CONFIG = ModelsBenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    cls = ModelsBenchConfig
    add_common_arguments(p)
    add_spinning_argument(p, cls)
    add_config_option(p, "--preset", cls, "preset", "tiny, base (wavlm-base-plus + roberta-base) or large")
    add_list_option(p, "--backends", cls, "backends", f"comma list from {', '.join(BACKENDS)}; 'all' = every one "
                    "present", default_text="all",
                    convert=lambda text: BACKENDS if text.strip() == "all" else parse_names(text))
    add_list_option(p, "--audio-s", cls, "audio_s", "audio lengths in seconds", float)
    add_list_option(p, "--text-tokens", cls, "text_tokens", "text lengths in tokens", int)
    add_list_option(p, "--batch", cls, "batch", "batch sizes", int)
    add_config_option(p, "--head-text-tokens", cls, "head_text_tokens",
                      "text length for the head-vs-audio sweep and the combined ratio")
    add_config_option(p, "--ref-audio-s", cls, "ref_audio_s", "audio length of the combined ratio")
    add_config_option(p, "--warmup", cls, "warmup", "untimed calls per point")
    add_config_option(p, "--repeat", cls, "repeat", "timed calls per point")
    add_config_option(p, "--max-seconds", cls, "max_seconds",
                      "stop a point early after this many timed seconds, keeping at least 3 calls (0 = never)")
    add_config_option(p, "--precision", cls, "precision", "precision of the GPU backends (bf16: torch only); the CPU "
                      "backends run fp32", choices=PRECISIONS)
    add_list_option(p, "--ort-variants", cls, "ort_variants",
                    "also time ONNX Runtime CPU variants of the encoder graphs: 'fused' (onnxruntime.transformers "
                    "fusion, parity-checked), 'int8' (dynamic int8 MatMul made here from the fp32 graphs) and/or "
                    "'fp32' (the bundle's fp32 graphs where onnxruntime-cpu runs its int8 encoders), e.g. fp32,fused")


def _inputs(spec: dict, dims: dict, seed: int) -> dict:
    """Every input of every point, generated once so all backends see the same arrays."""
    rng = np.random.default_rng(seed)
    points: dict = {}
    for b in spec["batch"]:
        for a in spec["audio_s"]:
            n = int(round(a * SAMPLE_RATE))
            values = (0.1 * rng.standard_normal((b, n))).astype(np.float32)
            points[("speech_encoder", b, a, None)] = {"input_values": values,
                                                      "attention_mask": np.ones((b, n), dtype=np.int64)}
        for t in spec["text_tokens"]:
            ids = rng.integers(4, 300, size=(b, t), dtype=np.int64)
            ids[:, 0], ids[:, -1] = 0, 2
            points[("text_encoder", b, None, t)] = {"input_ids": ids, "attention_mask": np.ones((b, t), dtype=np.int64)}
    return points


def _head_inputs(spec: dict, frames: dict, dims: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    points = {}
    shapes = [(a, spec["head_text_tokens"]) for a in spec["audio_s"]]
    shapes += [(spec["ref_audio_s"], t) for t in spec["text_tokens"] if t != spec["head_text_tokens"]]
    for b in spec["batch"]:
        for a, t in shapes:
            f = frames[a]
            points[("head", b, a, t)] = {
                "speech_hidden": rng.standard_normal((b, f, dims["speech_hidden"])).astype(np.float32),
                "speech_mask": np.ones((b, f), dtype=np.int64),
                "text_hidden": rng.standard_normal((b, t, dims["text_hidden"])).astype(np.float32),
                "text_mask": np.ones((b, t), dtype=np.int64),
            }
    return points


def _variant_graphs(bundle, variant: str, cache: Path, log) -> dict[str, Path]:
    """Encoder graphs rewritten offline ("fused" or "int8"), cached next to the bundle."""
    from crab_bench.optimize import fuse_encoder_graph, quantize_encoder_graph

    out = {}
    for name, model_type in (("speech_encoder", "wavlm"), ("text_encoder", "bert")):
        if name in bundle.graph_names:
            dst = cache / f"{bundle.root.name}-{name}.{variant}.onnx"
            if variant == "fused":
                out[name] = fuse_encoder_graph(bundle.graph_path(name), dst, model_type, log)
            else:
                out[name] = quantize_encoder_graph(bundle.graph_path(name), dst, log)
    return out


def load_backend(name: str, bundle, threads: int, precision: str, cache: Path, log=print, spinning: bool = False):
    """Sessions of `bundle` on backend `name` (see BACKENDS), or raise why it cannot run here."""
    from crab_rt.backends.select import load_sessions

    if name in TORCH_BACKENDS:
        from crab_rt.backends.torch import load_torch_sessions

        device, mode = TORCH_BACKENDS[name]
        # refuses CUDA when torch sees none; the CPU backends stay fp32 (the precision is the GPU backends')
        return load_torch_sessions(bundle, device, mode, "fp32" if device == "cpu" else precision)
    if name == "onnxruntime-cpu":
        return load_sessions(bundle, "onnxruntime", threads=threads, spinning=spinning)[0]
    if name == "onnxruntime-cpu-fp32":
        return load_sessions(bundle, "onnxruntime", threads=threads, spinning=spinning, cpu_int8=False)[0]
    if name in ("onnxruntime-cpu-fused", "onnxruntime-cpu-int8"):
        from crab_rt.backends.onnxruntime import OrtSession

        sessions = load_sessions(bundle, "onnxruntime", threads=threads, spinning=spinning, cpu_int8=False)[0]
        for graph, path in _variant_graphs(bundle, name.rsplit("-", 1)[1], cache, log).items():
            sessions[graph].close()
            sessions[graph] = OrtSession(path, graph, "cpu", 0, bundle.graph_io(graph), threads, spinning=spinning)
        return sessions
    if precision == "bf16" and name in BACKENDS:
        raise CrabError(f"{name} runs fp32 or fp16 graphs; bf16 is for the torch backends")
    if name == "onnxruntime-cuda":
        return load_sessions(bundle, "onnxruntime", gpu=0, precision=precision, threads=threads, spinning=spinning)[0]
    if name == "onnxruntime-tensorrt":
        from crab_rt.backends.onnxruntime import OrtSession, ort_providers

        providers = ort_providers("tensorrt", 0, bundle.root / "engines" / "ort-trt-cache", precision == "fp16", None)
        return {g: OrtSession(bundle.graph_path(g, precision), g, "tensorrt", 0, bundle.graph_io(g, precision),
                              threads, providers, spinning) for g in bundle.graph_names}
    if name == "tensorrt":
        return load_sessions(bundle, "tensorrt", gpu=0, precision=precision)[0]
    raise CrabError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")


def _available(names: list[str]) -> dict[str, str | None]:
    """backend -> None when it may run here, else the reason it is skipped."""
    from crab_rt.backends.onnxruntime import available_providers

    have = available_providers()
    out = {}
    for n in names:
        reason = None
        if n in TORCH_BACKENDS:
            try:
                import torch
            except ImportError:
                reason = "torch is not installed"
            else:
                if TORCH_BACKENDS[n][0] != "cpu" and not torch.cuda.is_available():
                    reason = "torch sees no CUDA device"
        elif n == "onnxruntime-cuda" and "CUDAExecutionProvider" not in have:
            reason = "onnxruntime has no CUDAExecutionProvider (needs onnxruntime-gpu)"
        elif n == "onnxruntime-tensorrt" and "TensorrtExecutionProvider" not in have:
            reason = "onnxruntime has no TensorrtExecutionProvider"
        elif n == "tensorrt":
            from crab_rt.backends.tensorrt import tensorrt_available

            ok, why = tensorrt_available()
            reason = None if ok else why
        out[n] = reason
    return out


def _label(key: tuple) -> str:
    graph, b, a, t = key
    parts = [f"b{b}"] + ([f"{a:g}s"] if a is not None else []) + ([f"{t}tok"] if t is not None else [])
    return f"{graph} " + " ".join(parts)


def _spec(config: ModelsBenchConfig) -> dict:
    return {"audio_s": list(config.audio_s), "text_tokens": list(config.text_tokens), "batch": list(config.batch),
            "head_text_tokens": config.head_text_tokens, "ref_audio_s": config.ref_audio_s}


def run(config: ModelsBenchConfig) -> int:
    """Time every graph of the preset on each backend; writes models_<preset>[_tag].json, .md and PNGs."""
    import warnings

    from crab_bench.bundles import bundle_info, ensure_bundle
    from crab_rt.bundle import load_bundle

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    # transformers' WavLM attention mixes a bool padding mask with a float bias (harmless, noisy).
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
    threads = resolve_threads(config.threads)
    spec = _spec(config)
    names = list(config.backends)
    for v in config.ort_variants:
        if f"onnxruntime-cpu-{v}" not in names:
            names.append(f"onnxruntime-cpu-{v}")
    ctx = start_run(config, threads)
    bundle_dir = ensure_bundle(config.preset, config.cache_dir, say)
    bundle = load_bundle(bundle_dir)
    info = bundle_info(bundle_dir)
    availability = _available([n for n in names if n in BACKENDS])
    if any(n.startswith("torch") for n in names if availability.get(n) is None):
        import torch

        torch.set_num_threads(threads)
    say(f"models bench: preset {config.preset}, threads {threads}, backends {', '.join(names)}")
    backends, skipped = [], []
    loaded: dict[str, dict] = {}
    for name in names:
        if availability.get(name):  # variants are always available (CPU onnxruntime)
            skipped.append({"backend": name, "reason": availability[name]})
            say(f"  skip {name}: {availability[name]}")
            continue
        try:
            loaded[name] = load_backend(name, bundle, threads, config.precision, Path(ctx["cache_dir"]), say,
                                        config.ort_spinning)
        except (CrabError, ImportError) as e:
            skipped.append({"backend": name, "reason": str(e).splitlines()[0]})
            say(f"  skip {name}: {e}")
            continue
        first = next(iter(loaded[name].values()))
        backends.append({"backend": name, "provider": first.provider, "device": first.device,
                         "precision": {g: getattr(s, "precision", "fp32") for g, s in loaded[name].items()}})
    frames = None
    if loaded:  # speech frames per length, from the encoder itself
        speech = next(iter(loaded.values()))["speech_encoder"]
        frames = {}
        for a in sorted(set(spec["audio_s"]) | {spec["ref_audio_s"]}):
            n = int(round(a * SAMPLE_RATE))
            feed = {"input_values": np.zeros((1, n), dtype=np.float32),
                    "attention_mask": np.ones((1, n), dtype=np.int64)}
            frames[a] = int(speech.run(feed)["frame_mask"].sum())
    measured = sweep(config, loaded, bundle.dims, frames or {}, say)
    for sessions in loaded.values():
        for s in sessions.values():
            s.close()
    loaded.clear()
    gc.collect()
    payload = {
        "kind": "models", "preset": config.preset, "bundle": {**info, "path": str(bundle_dir)},
        "settings": settings_record(config),
        "backends": backends, "skipped": skipped, **measured,
    }
    for r in payload["ratios"]:
        say(f"  ratio {r['what']}: {r['baseline']} / {r['backend']} = {r['speedup']:.2f}x")
    finish_run(ctx, "models_" + config.preset, payload, _markdown(payload), lambda stem: _plots(stem, payload), say)
    return 0


def settings_record(config: ModelsBenchConfig) -> dict:
    """The sweep's settings as written to the results."""
    return {**_spec(config), "warmup": config.warmup, "repeat": config.repeat, "max_seconds": config.max_seconds,
            "precision": config.precision, "seed": config.seed, "ort_spinning": config.ort_spinning,
            "inputs": "random waveforms (all samples valid), random token ids, random hidden states; "
                      "identical across backends"}


def sweep(config: ModelsBenchConfig, loaded: dict[str, dict], dims: dict, frames: dict[float, int], say=print,
          on_result=None) -> dict:
    """Time every point of `config`'s sweep on each loaded backend (they alternate point by point).

    Args:
        config: the sweep (lengths, batches, warm-up, repeats, seed).
        loaded: backend name -> {graph name: GraphSession}.
        dims: {"speech_hidden": D, "text_hidden": D} (the head's inputs).
        frames: speech frames per audio length in seconds (every `audio_s` and `ref_audio_s`).
        say: progress printer.
        on_result: called with each result row as soon as it is measured (a long run keeps what it did).

    Returns:
        {"speech_frames", "results", "agreement_max_abs_diff", "ratios", "failures"}; a graph whose call
        fails (a CUDA graph that cannot be captured, say) is listed in "failures" with its first failing
        point and error, and its later points are skipped: the other graphs and backends go on.
    """
    from crab_bench.stats import summarize_ms, time_calls

    spec = _spec(config)
    inputs = _inputs(spec, dims, config.seed)
    if loaded:
        inputs.update(_head_inputs(spec, frames, dims, config.seed))
    results, reference = [], {}
    agreement: dict[str, dict] = {name: {} for name in loaded}
    # Backends alternate point by point (all loaded at once), so drift in the machine's load
    # over the run affects them alike.
    failures: list[dict] = []
    for key, feed in inputs.items():
        for name, sessions in loaded.items():
            if key[0] not in sessions or any(f["backend"] == name and f["graph"] == key[0] for f in failures):
                continue
            session = sessions[key[0]]
            last = {}

            def call(session=session, feed=feed, last=last):
                last["out"] = session.run(feed)

            try:
                samples = time_calls(call, config.warmup, config.repeat, config.max_seconds)
            except CrabError as e:
                failures.append({"backend": name, "graph": key[0], "point": _label(key), "error": str(e)})
                say(f"  {name:<30} {_label(key):<24} FAILED: {e}; its later points are skipped")
                continue
            stats = summarize_ms(samples, (50, 90, 95, 99))
            out = last["out"][_MAIN_OUTPUT[key[0]]]
            if key not in reference:
                reference[key] = out
            else:
                ref = reference[key].astype(np.float64)
                if out.shape == ref.shape:
                    diff = out.astype(np.float64) - ref
                    err = float(np.max(np.abs(diff)))
                    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-12))
                else:
                    err = rel = float("nan")
                prev = agreement[name].get(key[0], {"max_abs": 0.0, "rel_l2": 0.0})
                agreement[name][key[0]] = {"max_abs": max(prev["max_abs"], err), "rel_l2": max(prev["rel_l2"], rel)}
            row = {"backend": name, "graph": key[0], "batch": key[1], "audio_s": key[2], "text_tokens": key[3],
                   "ms": stats}
            results.append(row)
            if on_result is not None:
                on_result(row)
            say(f"  {name:<30} {_label(key):<24} p50 {stats['p50']:9.2f} ms  p90 {stats['p90']:9.2f}  n {stats['n']}")
    names = list(loaded)
    return {"speech_frames": {f"{a:g}": f for a, f in frames.items()}, "results": results,
            "agreement_max_abs_diff": {"reference": names[0] if names else None, **agreement},
            "ratios": _ratios(results, spec, names), "failures": failures}


def _p50(results: list, backend: str, graph: str, batch: int, audio_s, tokens) -> float | None:
    want = (backend, graph, batch, audio_s, tokens)
    for r in results:
        if (r["backend"], r["graph"], r["batch"], r["audio_s"], r["text_tokens"]) == want:
            return r["ms"]["p50"]
    return None


def combined_p50(results: list, backend: str, batch: int, audio_s: float, tokens: int) -> float | None:
    """speech(audio_s) + text(tokens) + head(audio_s, tokens) p50, ms, or None if a part is missing."""
    parts = [_p50(results, backend, "speech_encoder", batch, audio_s, None),
             _p50(results, backend, "text_encoder", batch, None, tokens),
             _p50(results, backend, "head", batch, audio_s, tokens)]
    return None if any(p is None for p in parts) else round(sum(parts), 3)


def _ratios(results: list, spec: dict, names: list[str]) -> list[dict]:
    """Each backend against the baseline, from this run, per batch.

    The baseline is torch eager on the CPU when it ran, else the first backend.
    Compared: speech + text + head at the reference shape, and each encoder alone.
    speedup = baseline_ms / backend_ms (below 1 means slower than the baseline).
    """
    if not names:
        return []
    base = "torch-cpu" if "torch-cpu" in names else names[0]
    a, t = spec["ref_audio_s"], spec["head_text_tokens"]
    out = []
    for b in spec["batch"]:
        parts = (
            (f"speech+text+head p50, {a:g} s audio, {t} tokens, batch {b}",
             lambda n, b=b: combined_p50(results, n, b, a, t)),
            (f"speech_encoder p50, {a:g} s audio, batch {b}",
             lambda n, b=b: _p50(results, n, "speech_encoder", b, a, None)),
            (f"text_encoder p50, {t} tokens, batch {b}",
             lambda n, b=b: _p50(results, n, "text_encoder", b, None, t)),
        )
        for what, p50 in parts:
            ref = p50(base)
            for n in names:
                value = p50(n)
                if n != base and ref and value:
                    out.append({"what": what, "baseline": base, "baseline_ms": ref, "backend": n, "backend_ms": value,
                                "speedup": round(ref / value, 3)})
    return out


def _markdown(payload: dict) -> tuple[str, list[tuple[str, str]], list[str]]:
    from crab_bench.report import markdown_table

    results = payload["results"]
    names = [b["backend"] for b in payload["backends"]]
    sections = []
    for graph in ("speech_encoder", "text_encoder", "head"):
        rows = []
        keys = []
        for r in results:
            k = (r["batch"], r["audio_s"], r["text_tokens"])
            if r["graph"] == graph and k not in keys:
                keys.append(k)
        for b, a, t in keys:
            row = [b, a, t]
            for n in names:
                r = next((r for r in results if (r["backend"], r["graph"], r["batch"], r["audio_s"], r["text_tokens"])
                          == (n, graph, b, a, t)), None)
                ms = None if r is None else r["ms"]
                row.append(None if ms is None else f"{ms['p50']:.2f} / {ms['p90']:.2f} / {ms['p99']:.2f} (n={ms['n']})")
            rows.append(row)
        sections.append((f"{graph}: p50 / p90 / p99 ms", markdown_table(["batch", "audio s", "tokens", *names], rows)))
    ratio_rows = [[r["what"], r["baseline"], r["baseline_ms"], r["backend"], r["backend_ms"], f"{r['speedup']:.2f}x"]
                  for r in payload["ratios"]]
    sections.insert(0, ("Ratios to the baseline (same run; speedup = baseline ms / backend ms)",
                        markdown_table(["what", "baseline", "ms", "backend", "ms", "speedup"], ratio_rows)))
    agree, settings = payload["agreement_max_abs_diff"], payload["settings"]
    notes = [
        f"preset **{payload['preset']}**: {payload['bundle']['speech_encoder']} + {payload['bundle']['text_encoder']}, "
        f"random weights; bundle exported with parity check OFF (outputs compared below instead)",
        f"warm-up {settings['warmup']} calls excluded; up to {settings['repeat']} timed calls per "
        f"point, a point stops after {settings['max_seconds']:g} s timed (n is shown); backends are all "
        "loaded and alternate point by point; ONNX Runtime idle spinning "
        + ("on" if settings["ort_spinning"] else "off (the runtime's default)"),
        "backends skipped: " + (", ".join(f"{s['backend']} ({s['reason']})" for s in payload["skipped"]) or "none"),
        "graphs that failed (their later points skipped): " + (", ".join(
            f"{f['backend']} {f['point']} ({f['error']})" for f in payload.get("failures", [])) or "none"),
        "graph precision per backend: " + "; ".join(
            f"{b['backend']}: " + ", ".join(f"{g} {p}" for g, p in b["precision"].items())
            for b in payload["backends"] if b.get("precision")),
        "max abs difference vs " + str(agree.get("reference")) + ": " + "; ".join(
            f"{n}: " + ", ".join(f"{g} {v['max_abs']:.1e} (rel {v['rel_l2']:.1e})" for g, v in d.items())
            for n, d in agree.items() if n != "reference" and d),
    ]
    return f"Model latency, preset {payload['preset']}", sections, notes


def _plots(stem: Path, payload: dict) -> list[Path]:
    from crab_bench.report import line_panels

    results = payload["results"]
    head_tokens = payload["settings"]["head_text_tokens"]
    paths = []
    for b in payload["settings"]["batch"]:
        panels = []
        for graph, axis, xlabel in (("speech_encoder", "audio_s", "audio (s)"),
                                    ("text_encoder", "text_tokens", "tokens"),
                                    ("head", "audio_s", f"audio (s), {head_tokens} tokens")):
            series = {}
            for be in payload["backends"]:
                rows = [r for r in results if r["backend"] == be["backend"] and r["graph"] == graph and r["batch"] == b
                        and (graph != "head" or r["text_tokens"] == head_tokens)]
                rows.sort(key=lambda r: r[axis])
                if rows:
                    series[be["backend"]] = ([r[axis] for r in rows], [r["ms"]["p50"] for r in rows])
            panels.append({"title": f"{graph} (batch {b})", "xlabel": xlabel, "ylabel": "p50 ms", "series": series})
        path = Path(f"{stem}_batch{b}.png")
        line_panels(path, f"preset {payload['preset']}: latency vs length, batch {b}", panels)
        paths.append(path)
    return paths
