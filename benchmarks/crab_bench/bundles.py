"""Benchmark models: random-weight Crab bundles at real sizes, and the tiny offline Whisper.

Weights are random (no downloads); the compute is that of the real
architectures. Bundles are built once per preset into a cache folder, in a
child process so the benchmark process does not carry the build's memory or
imports (torch stays out of a runtime-only measurement). A cached bundle is
rebuilt when the code or the libraries that export it have changed since
(`export_signature`, recorded in its marker): a benchmark never times a stale
export.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from crab_rt.errors import ConfigError

__all__ = ["PRESETS", "LABELS", "default_cache_dir", "export_signature", "ensure_bundle", "build_bench_model",
           "build_on_device", "ensure_tiny_asr", "check_asr_spec", "resolve_asr", "build_bench_bundle", "bundle_info",
           "main"]

# preset -> (speech encoder, text encoder, head hidden_dim, head classifier_dim, max_text_tokens)
PRESETS: dict[str, tuple[str, str, int, int, int]] = {
    "tiny": ("random:wavlm-tiny", "random:roberta-tiny", 16, 16, 128),
    "base": ("random:wavlm-base-plus", "random:roberta-base", 512, 512, 128),
    "large": ("random:wavlm-large", "random:roberta-large", 512, 512, 128),
}
LABELS = ("neutral", "happy", "angry", "sad")
_MARKER = "bench_preset.json"
_TEXTS = [
    "i love this so much", "this is terrible and i am angry", "okay fine then", "so sad today",
    "what a wonderful surprise", "leave me alone", "i do not know what to say", "that is great news",
]


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/crab-rt/bench` (default `~/.cache/crab-rt/bench`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crab-rt" / "bench"


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r} is not one of {', '.join(PRESETS)}")


def build_bench_bundle(preset: str, out: str | Path, seed: int = 0) -> Path:
    """Build a random-weight model of `preset`, save a checkpoint and export a bundle (parity off).

    Args:
        preset: "tiny", "base" or "large".
        out: bundle folder to write (`<out>.ckpt.pt` holds the checkpoint).
        seed: torch seed of the random weights.

    Returns:
        The bundle folder.

    Raises:
        ConfigError: unknown preset.
    """
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.text import train_bpe_tokenizer
    from crab_rt.train.checkpoint import save_checkpoint

    speech, text, _, _, max_tokens = PRESETS[preset]
    out = Path(out)
    model = build_bench_model(preset, seed)
    tokenizer = train_bpe_tokenizer(_TEXTS, vocab_size=300, max_length=max_tokens)
    ckpt = save_checkpoint(out.with_name(out.name + ".ckpt.pt"), model, tokenizer,
                           {"max_audio_s": 12.0, "max_text_tokens": max_tokens})
    counts = model.parameter_counts()
    del model
    export_bundle(ckpt, out, ExportOptions(parity=False))
    ckpt.unlink()
    marker = {"preset": preset, "speech_encoder": speech, "text_encoder": text, "seed": seed,
              "export_signature": export_signature(),
              "parameters": counts, "parity_checked": False}
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out


def build_bench_model(preset: str, seed: int = 0, device: str = "cpu"):
    """The random-weight `CrabModel` of `preset` (eval mode), its weights made on `device`.

    Making them on the GPU (`device="cuda:0"`) takes a second where the CPU takes many for the large
    preset; the values differ from a CPU build with the same seed.

    Raises:
        ConfigError: unknown preset.
    """
    _check_preset(preset)
    import torch

    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel

    speech, text, hidden, classifier, max_tokens = PRESETS[preset]
    torch.manual_seed(seed)
    config = ModelConfig(speech_encoder=speech, text_encoder=text,
                         head=HeadConfig(hidden_dim=hidden, classifier_dim=classifier), max_text_tokens=max_tokens)
    return build_on_device(lambda: CrabModel.build(config, list(LABELS)), device).eval()


def build_on_device(build, device: str):
    """`build()` (a torch module) with its tensors made on `device`, where random initialisation is fast.

    Should making them there fail (a library that does not honour torch's default device, say), the module
    is built on the CPU and moved, with a warning on the `crab_bench` logger.
    """
    import logging

    import torch

    try:
        with torch.device(device):
            module = build()
    except Exception as e:  # noqa: BLE001 - the CPU build below is the fallback for any failure
        if device == "cpu":
            raise
        logging.getLogger("crab_bench").warning("building on %s failed (%s: %s); building on the CPU", device,
                                                type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        module = build()
    return module.to(device)


def export_signature() -> str:
    """A hash of what a benchmark bundle's graphs depend on: the export stage's and the model's sources
    (`crab_rt.export`, `crab_rt.model`), and the versions of torch, transformers, onnx and onnxruntime."""
    import hashlib
    import importlib.metadata
    import importlib.util

    digest = hashlib.sha256()
    for package in ("crab_rt.export", "crab_rt.model"):
        spec = importlib.util.find_spec(package)
        folder = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(folder.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for dist in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{dist}={version}".encode())
    return digest.hexdigest()[:16]


def bundle_info(bundle: Path) -> dict:
    """The preset marker written next to a benchmark bundle's manifest."""
    return json.loads((Path(bundle) / _MARKER).read_text(encoding="utf-8"))


def ensure_bundle(preset: str, cache_dir: str | Path | None = None, log=print) -> Path:
    """The cached bundle of `preset`, built in a child process when absent.

    Raises:
        ConfigError: unknown preset, or the build failed (its stderr tail is in the message).
    """
    _check_preset(preset)
    out = Path(cache_dir or default_cache_dir()) / f"bundle-{preset}"
    if (out / _MARKER).is_file():
        signature = bundle_info(out).get("export_signature")
        if signature == export_signature():
            return out
        if log:
            log(f"the cached {preset} benchmark bundle in {out} was exported by other code or libraries "
                f"(signature {signature or 'not recorded'}); rebuilding it")
        (out / _MARKER).unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building the {preset} benchmark bundle (random weights, parity off) in {out} ...")
    # The child imports this package from the source tree (benchmarks/ is not installed).
    bench_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (bench_root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "crab_bench.bundles", "--preset", preset, "--out", str(out)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (out / _MARKER).is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise ConfigError(f"building the {preset} benchmark bundle in {out} failed: {tail}")
    return out


def ensure_tiny_asr(cache_dir: str | Path | None = None, size: str = "micro") -> Path:
    """A random-weight offline Whisper of `size` (data/tiny_asr.py), built in a child process when absent.

    Raises:
        ConfigError: unknown size, or the build failed.
    """
    from crab_rt.data.tiny_asr import SIZES, is_tiny_whisper

    if size not in SIZES:
        raise ConfigError(f"unknown random Whisper size {size!r} (choose from {', '.join(SIZES)})")
    out = Path(cache_dir or default_cache_dir()) / ("tiny-whisper" if size == "micro" else f"random-whisper-{size}")
    if is_tiny_whisper(out, size=size):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "crab_rt.data.tiny_asr", "--out", str(out), "--size", size],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not is_tiny_whisper(out, size=size):
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise ConfigError(f"building the random Whisper {size} in {out} failed: {tail}")
    return out


def check_asr_spec(option: str, spec: str | None) -> None:
    """Raise ConfigError when `spec` (an `--asr` value, see `resolve_asr`) cannot name a model.

    Checked before anything is built: an empty name, or a random Whisper of an unknown size.
    """
    from crab_rt.data.tiny_asr import SIZES

    if spec is not None and not spec.strip():
        raise ConfigError(f"{option}: {spec!r} is not a model name")
    if spec is not None and spec.startswith("random:whisper-"):
        size = spec.split("-", 1)[1]
        if size not in SIZES:
            raise ConfigError(f"{option}: unknown random Whisper size {size!r} (choose from {', '.join(SIZES)})")


def resolve_asr(spec: str | None, cache_dir: str | Path | None = None) -> tuple[str | None, str]:
    """The faster-whisper model a benchmark's `--asr` names, and a note saying what its timings mean.

    None: the micro offline Whisper (cheap, not a real ASR cost); "none": no ASR;
    "random:whisper-tiny|base|small": random weights in OpenAI's shapes, built
    offline (real encoder compute, an 8-token transcript); anything else: a
    faster-whisper name in the local cache or a CTranslate2 folder.
    """
    from crab_rt.data.tiny_asr import describe_size

    if spec == "none":
        return None, "no ASR (empty text)"
    if spec is None or spec == "random:whisper-micro":
        return str(ensure_tiny_asr(cache_dir)), (
            f"micro offline Whisper (random weights, {describe_size('micro')}): ASR time is NOT that of a real "
            "Whisper; pass --asr random:whisper-small (or small.en) for one")
    if spec.startswith("random:whisper-"):
        size = spec.split("-", 1)[1]
        return str(ensure_tiny_asr(cache_dir, size)), (
            f"random-weight Whisper {size} ({describe_size(size)}, 51864-token vocabulary): real encoder compute "
            "(30 s window), transcript fixed at 8 tokens")
    return spec, f"faster-whisper {spec}"


def main(argv: list[str] | None = None) -> int:
    """`python -m crab_bench.bundles --preset P --out DIR` (used by `ensure_bundle`)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    build_bench_bundle(args.preset, args.out, args.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
