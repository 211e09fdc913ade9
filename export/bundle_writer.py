"""Checkpoint -> model bundle: graphs, parity, fp16 variant, manifest, atomic write.

The bundle is built in a temporary sibling folder and renamed into place only
when every step (export, op check, parity, fp16 parity) passed, so a failed
export leaves no half bundle. See `crab_rt.bundle` for the reader and the
manifest's fields.

A local CTranslate2 folder given as `asr_model` is copied into the bundle's
`asr/` folder and listed with sha256s like the graphs, so the bundle works from
any folder and any working directory; its original absolute path is kept as
provenance only. A model name ("small.en", a hub id) is recorded as a name.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crab_rt.audio import SAMPLE_RATE
from crab_rt.bundle import ASR_FOLDER, BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, MANIFEST_NAME, PRECISIONS, sha256_file
from crab_rt.errors import BundleError, ConfigError

__all__ = ["ExportOptions", "export_bundle", "shape_ranges"]

log = logging.getLogger(__name__)

_ASR_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "small.en" or a hub id "owner/name"
_ASR_REQUIRED = ("model.bin", "config.json", "tokenizer.json")  # the runtime never downloads a tokenizer


@dataclass(frozen=True)
class ExportOptions:
    """How to export a checkpoint.

    Attributes:
        precision: "fp32", or "fp16" to also write fp16 graphs (fp32 are always written).
        opset: ONNX opset (>= 17, for LayerNormalization).
        parity: run the torch vs ONNX Runtime parity check (strongly recommended).
        tolerance: largest max abs error allowed on any output in the parity check (encoder hidden states:
            relative to their largest magnitude where that is above 1).
        fp16_tolerance: largest max abs error allowed on probabilities, fp16 vs fp32.
        asr_model: the runtime's ASR model, or None: a faster-whisper name or hub id (recorded
            as a name) or a local CTranslate2 folder (copied into the bundle).
        max_batch: largest batch in the recorded shape ranges (TensorRT profiles).
        torch_weights: write the model-only torch checkpoint `model.pt` (for `--backend torch`). Without it
            (`crab-rt export --no-torch-weights`) the bundle is smaller, runs on ONNX Runtime and TensorRT
            only, and its manifest records `"torch": null`.
        incremental_speech: also write the speech encoder as `speech_frontend` + `speech_backend` for
            incremental encoding when its parity against the whole graph is within the bounds below
            (`crab_rt.export.speech_split`); the manifest records the parity either way.
        incremental_tolerance: bound on the encoder output's max abs diff, incremental vs whole.
        incremental_prob_tolerance: bound on the probabilities' max abs diff, incremental vs whole.
        cpu_int8: also write int8 encoder graphs for ONNX Runtime on the CPU (`crab_rt.export.int8`), kept
            when their probabilities are within `int8_tolerance` of the fp32 pipeline's; the manifest's
            `cpu_int8` entry records the parity either way. The CPU backend runs them by default.
        int8_tolerance: bound on the probabilities' max abs diff, int8 encoders vs fp32.
        int8_min_weights: an encoder with fewer MatMul/Gemm weights stays fp32 (too small to gain).
    """

    precision: str = "fp32"
    opset: int = 17
    parity: bool = True
    tolerance: float = 1e-4
    fp16_tolerance: float = 1e-2
    asr_model: str | None = None
    max_batch: int = 8
    torch_weights: bool = True
    incremental_speech: bool = True
    incremental_tolerance: float = 1e-3
    incremental_prob_tolerance: float = 1e-4
    cpu_int8: bool = True
    int8_tolerance: float = 1e-2
    int8_min_weights: int = 4_000_000

    def validate(self) -> ExportOptions:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 17 <= self.opset <= 21:
            raise ConfigError(f"opset must be in [17, 21], got {self.opset}")
        for name in ("tolerance", "fp16_tolerance", "incremental_tolerance", "incremental_prob_tolerance",
                     "int8_tolerance"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if self.int8_min_weights < 0:
            raise ConfigError(f"int8_min_weights must be >= 0, got {self.int8_min_weights}")
        if not 1 <= self.max_batch <= 256:
            raise ConfigError(f"max_batch must be in [1, 256], got {self.max_batch}")
        return self


def shape_ranges(model, max_audio_s: float, max_text_tokens: int, max_batch: int = 8) -> dict:
    """min/opt/max of each dynamic axis (for TensorRT optimisation profiles).

    Speech frames are computed from the sample counts by the encoder's own
    length formula.
    """
    from crab_rt.features import MIN_SAMPLES

    max_samples = int(round(max_audio_s * SAMPLE_RATE))
    samples = {"min": MIN_SAMPLES, "opt": min(64000, max_samples), "max": max_samples}
    ranges = {
        "batch": {"min": 1, "opt": 1, "max": max_batch},
        "audio_samples": samples,
        "text_tokens": {"min": 1, "opt": min(32, max_text_tokens), "max": max_text_tokens},
    }
    if model.speech_encoder is not None:
        import torch

        frames = model.speech_encoder.frame_lengths(torch.tensor([samples["min"], samples["opt"], samples["max"]]))
        ranges["speech_frames"] = dict(zip(("min", "opt", "max"), (int(f) for f in frames)))
    return ranges


def _model_only_payload(payload: dict) -> dict:
    keys = ("format", "crab_rt_version", "architecture", "model_settings", "tokenizer_json", "model_state")
    return {k: payload[k] for k in keys if k in payload}


def _graph_entry(path: Path) -> dict:
    from crab_rt.export.onnx_export import graph_io, graph_ops

    io = graph_io(path)
    return {"file": path.name, "sha256": sha256_file(path), **io, "ops": graph_ops(path)}


def _asr_folder(asr_model: str | None) -> Path | None:
    """The local CTranslate2 folder `asr_model` names, or None for a model name (or no model).

    Raises:
        ConfigError: a path that does not exist, a file, a folder that is not a complete
            CTranslate2 Whisper model, or a value that is neither a folder nor a name.
    """
    if asr_model is None:
        return None
    path = Path(asr_model).expanduser()
    if path.is_dir():
        missing = [n for n in _ASR_REQUIRED if not (path / n).is_file()]
        if missing:
            raise ConfigError(
                f"asr model {path}: not a complete CTranslate2 Whisper folder (no {', '.join(missing)}); "
                "convert with ct2-transformers-converter --copy_files tokenizer.json preprocessor_config.json"
            )
        return path
    if path.exists():
        raise ConfigError(f"asr model {path}: is a file, not a CTranslate2 model folder")
    if asr_model.startswith((".", "/", "~")) or asr_model.count("/") > 1 or "\\" in asr_model:
        raise ConfigError(f"asr model folder {path} does not exist")
    if not _ASR_NAME_RE.match(asr_model):
        raise ConfigError(f"asr model {asr_model!r}: not a folder, a faster-whisper size name or a hub id")
    return None


def _copy_asr(source: Path, bundle: Path) -> dict:
    """Copy a CTranslate2 folder into `bundle/asr/`; returns the manifest's "asr" entry with every file's sha256."""
    dest = bundle / ASR_FOLDER
    files = []
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = file.relative_to(source)
        if any(part.startswith(".") for part in rel.parts):  # .gitattributes, caches
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)  # follows links (Hugging Face snapshots link to blobs)
        files.append({"file": target.relative_to(bundle).as_posix(), "sha256": sha256_file(target)})
    size_mb = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 1e6
    log.info("copied the ASR model %s into the bundle (%s/, %d files, %.1f MB)", source, ASR_FOLDER, len(files),
             size_mb)
    return {"folder": ASR_FOLDER, "files": files}


def _calibration_entry(calibration: dict | None, graphs: dict) -> dict:
    """The manifest's `calibration`: the temperature of each classifier graph (1.0 where training fitted none),
    and the dev-split ECE before and after it, as the trainer measured (`crab_rt.train.calibration`)."""
    calibration = calibration or {}
    entry: dict = {"split": calibration.get("split")}
    for name in ("head", "speech_classifier"):
        if name in graphs:
            fitted = calibration.get(name) or {}
            entry[name] = {"temperature": float(fitted.get("temperature", 1.0)),
                           **{k: fitted[k] for k in ("ece_before", "ece_after") if k in fitted}}
    return entry


def _place(tmp: Path, out: Path) -> None:
    """Move the finished temp folder to `out`, replacing an older bundle there."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.replace(old / out.name)
        tmp.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    options: ExportOptions = ExportOptions(),
) -> Path:
    """Export a checkpoint to a bundle folder.

    Each step is logged at INFO to `crab_rt.export.bundle_writer` (the graphs to `crab_rt.export.onnx_export`).

    Args:
        checkpoint: a crab-rt checkpoint (best.pt / last.pt).
        out: the bundle folder to create (an existing bundle there is replaced).
        options: see `ExportOptions`.

    Returns:
        the bundle folder.

    Raises:
        ConfigError: unreadable checkpoint or bad options.
        BundleError: `out` is a non-empty folder that is not a bundle, a graph uses an op
            TensorRT handles badly, or parity exceeds its tolerance.
    """
    import torch

    from crab_rt import __version__
    from crab_rt.export.fp16 import convert_to_fp16
    from crab_rt.export.onnx_export import check_graph_ops, export_graphs, graph_names
    from crab_rt.export.parity import check_fp16_parity, check_parity
    from crab_rt.model.checkpoint import load_model

    options.validate()
    asr_source = _asr_folder(options.asr_model)
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file())):
        raise BundleError(f"{out}: exists and is not a crab-rt bundle; choose another --out")
    log.info("loading checkpoint %s...", checkpoint)
    model, tokenizer, payload = load_model(checkpoint)
    settings = payload["model_settings"]
    max_audio_s, max_text_tokens = float(settings["max_audio_s"]), int(settings["max_text_tokens"])
    modality = model.head.config.modality

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        graphs = export_graphs(model, tmp, options.opset)
        if set(graphs) != set(graph_names(modality, model.speech_classifier is not None)):
            raise BundleError(f"exported graphs {sorted(graphs)} do not match modality {modality}")
        entries: dict[str, dict] = {}
        for name, path in graphs.items():
            entries[name] = {"fp32": _graph_entry(path)}
            check_graph_ops(name, entries[name]["fp32"]["ops"])
            ops = entries[name]["fp32"]["ops"]
            log.debug("  %s: %.1f MB, ops %s", path.name, path.stat().st_size / 1e6, ", ".join(ops))
        incremental = None  # the manifest's incremental_speech entry (crab_rt.export.speech_split)
        if options.incremental_speech and model.speech_encoder is not None:
            from crab_rt.export.speech_split import incremental_entry

            incremental, split = incremental_entry(
                model, graphs, tmp, options.opset, options.incremental_tolerance, options.incremental_prob_tolerance,
                max_audio_samples=int(round(max_audio_s * SAMPLE_RATE)))
            for name, path in split.items():
                entries[name] = {"fp32": _graph_entry(path)}
                check_graph_ops(name, entries[name]["fp32"]["ops"])
        parity: dict[str, float] | None = None
        if options.parity:
            log.info("parity (ONNX Runtime CPU vs torch, tolerance %g)...", options.tolerance)
            parity = check_parity(model, graphs, max_text_tokens, options.tolerance)
            for name, err in parity.items():
                log.info("  %-17s max err %.1e OK", name, err)
        else:
            log.info("parity check skipped (--no-parity)")

        # the token ids the ONNX-vs-ONNX parity cases draw from (int8 and fp16): the text encoder's vocabulary
        vocab, pad_id = 2, 0
        if model.text_encoder is not None:
            cfg = model.text_encoder.model.config
            vocab, pad_id = int(cfg.vocab_size), int(getattr(cfg, "pad_token_id", 0) or 0)
        cpu_int8 = None  # the manifest's cpu_int8 entry (crab_rt.export.int8); checked against fp32 ONNX, always
        if options.cpu_int8:
            from crab_rt.export.int8 import int8_entry

            cpu_int8, int8_graphs = int8_entry(graphs, tmp, modality, vocab, pad_id, max_text_tokens,
                                               model.normalize_waveform, options.int8_tolerance,
                                               options.int8_min_weights)
            for name, path in int8_graphs.items():
                entries[name]["int8"] = _graph_entry(path)

        fp16_parity = None
        if options.precision == "fp16":
            fp16_graphs = {}
            for name, path in graphs.items():
                log.info("converting %s to fp16...", name)
                fp16_graphs[name] = convert_to_fp16(path, tmp / f"{name}.fp16.onnx")
                entries[name]["fp16"] = _graph_entry(fp16_graphs[name])
            if options.parity:
                log.info("fp16 parity (probabilities vs fp32, tolerance %g)...", options.fp16_tolerance)
                fp16_parity = check_fp16_parity(
                    graphs, fp16_graphs, modality, vocab, pad_id, max_text_tokens,
                    model.normalize_waveform, options.fp16_tolerance,
                )
                log.info("  probabilities max err %.1e OK", fp16_parity["probabilities"])

        log.info("writing tokenizer, %smanifest...", "torch weights and " if options.torch_weights else "")
        tokenizer_entry = None
        if tokenizer is not None and modality != "speech":
            tok_path = tokenizer.save(tmp / "tokenizer.json")
            tokenizer_entry = {"file": tok_path.name, "sha256": sha256_file(tok_path)}
        torch_entry = None  # "torch": null records an export with --no-torch-weights
        if options.torch_weights:
            torch_path = tmp / "model.pt"
            torch.save(_model_only_payload(payload), torch_path)
            torch_entry = {"file": torch_path.name, "sha256": sha256_file(torch_path)}
        asr_entry = {"model": options.asr_model} if asr_source is None else _copy_asr(asr_source, tmp)

        dims = {
            "speech_hidden": None if model.speech_encoder is None else model.speech_encoder.hidden_size,
            "text_hidden": None if model.text_encoder is None else model.text_encoder.hidden_size,
        }
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "labels": list(model.labels),
            "sample_rate": SAMPLE_RATE,
            "normalize_waveform": bool(model.normalize_waveform),
            "max_audio_s": max_audio_s,
            "max_text_tokens": max_text_tokens,
            "modality": modality,
            "dims": dims,
            "graphs": entries,
            "shape_ranges": shape_ranges(model, max_audio_s, max_text_tokens, options.max_batch),
            "incremental_speech": incremental,
            "cpu_int8": cpu_int8,
            "tokenizer": tokenizer_entry,
            "torch": torch_entry,
            "asr": asr_entry,
            "calibration": _calibration_entry(payload.get("calibration"), graphs),
            "provenance": {
                "checkpoint": str(checkpoint.resolve()),
                "checkpoint_sha256": sha256_file(checkpoint),
                "asr_source": None if asr_source is None else str(asr_source.resolve()),
                "crab_rt_version": __version__,
                "torch_version": torch.__version__,
                "onnx_opset": options.opset,
                "exporter": "torch.onnx legacy (dynamo=False)",
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "parity": parity,
                "fp16_parity": fp16_parity,
                "tolerance": options.tolerance if options.parity else None,
                "fp16_tolerance": options.fp16_tolerance if fp16_parity is not None else None,
            },
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    built = ", ".join(f"{n}.onnx" for n in graphs) + (" (+ fp16)" if options.precision == "fp16" else "")
    log.info("bundle %s: %d labels, modality %s, %s, %.1f MB", out, len(model.labels), modality, built, size_mb)
    return out
