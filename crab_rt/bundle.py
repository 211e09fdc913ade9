"""Model bundles on the runtime side: read and verify a folder written by `crab-rt export`.

A bundle is a folder with `manifest.json` and the files it lists (ONNX graphs
per precision, `tokenizer.json`, a model-only torch checkpoint `model.pt`
unless exported with `--no-torch-weights` (manifest `"torch": null`: the bundle
then runs on ONNX Runtime and TensorRT only), and optionally a CTranslate2
Whisper model under `asr/`). A listed file is never optional: a listed
`model.pt` that is missing is refused like any other missing file. Every listed file carries a sha256
that `load_bundle` checks, so a truncated copy or a hand-edited graph is
refused with one line naming the file. This module needs neither torch nor onnx.

Bundles are relocatable: every path in the manifest is relative to the bundle
folder; absolute paths appear only under "provenance". The ASR entry:

- format_version 2 (written by this crab-rt):
  `"asr": {"model": null}` (none recorded), `"asr": {"model": "tiny.en"}` (a
  faster-whisper name or hub id, resolved at run time), or
  `"asr": {"folder": "asr", "files": [{"file": "asr/model.bin", "sha256": ...}, ...]}`
  (a local CTranslate2 folder given to `crab-rt export --asr`, copied into the
  bundle; its original absolute path is `provenance.asr_source`).
  `Bundle.asr_model` is then the bundle's `asr/` folder, wherever the bundle is.
- format_version 1 (older crab-rt): `"asr": {"model": <str>}` holds the value
  given at export. It still loads and the value is used as before: a name is a
  name, a relative path is taken from the *current* directory. When the value
  could be a path, a warning says so and asks for a re-export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from crab_rt.audio import SAMPLE_RATE
from crab_rt.errors import BundleError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "PRECISIONS",
    "ASR_FOLDER",
    "Bundle",
    "NO_TORCH_WEIGHTS",
    "load_bundle",
    "sha256_file",
]

BUNDLE_FORMAT = "crab-rt-bundle"
BUNDLE_FORMAT_VERSION = 2  # 2: relocatable; a local ASR model is copied in (see the module docstring)
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16")
ASR_FOLDER = "asr"  # where `crab-rt export --asr FOLDER` copies a local CTranslate2 model

NO_TORCH_WEIGHTS = ("{root}: this bundle has no torch weights (exported with --no-torch-weights); "
                    "use --backend onnxruntime or tensorrt")

log = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "small.en" or a hub id "owner/name"

_REQUIRED_KEYS = (
    "labels",
    "sample_rate",
    "normalize_waveform",
    "max_audio_s",
    "max_text_tokens",
    "modality",
    "graphs",
    "shape_ranges",
    "torch",
)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the manifest's fields and the paths of its files.

    Attributes:
        root: the bundle folder.
        manifest: the parsed manifest.json (read-only by convention).
        labels: class names in logit order.
        sample_rate: audio rate the speech encoder expects (always `crab_rt.audio.SAMPLE_RATE`).
        normalize_waveform: whether waveforms are normalised per utterance.
        max_audio_s: longest audio the model was trained on; longer input is cut.
        max_text_tokens: longest token sequence, special tokens included.
        modality: "both", "speech" or "text".
        shape_ranges: {"batch" | "audio_samples" | "text_tokens" | "speech_frames":
            {"min", "opt", "max"}} for TensorRT optimisation profiles.
        asr_model: the ASR model recorded at export, or None: a faster-whisper name or hub
            id, or the absolute path of the model folder copied into the bundle (format 2).
            Pass it as `AsrConfig.model`.
    """

    root: Path
    manifest: dict
    labels: tuple[str, ...]
    sample_rate: int
    normalize_waveform: bool
    max_audio_s: float
    max_text_tokens: int
    modality: str
    shape_ranges: dict
    asr_model: str | None

    @property
    def graph_names(self) -> tuple[str, ...]:
        """Graphs in this bundle, in run order (the speech encoder and its voice-only classifier, the text
        encoder, the head)."""
        order = ("speech_encoder", "speech_classifier", "text_encoder", "head")
        return tuple(n for n in order if n in self.manifest["graphs"])

    def temperature(self, graph: str) -> float:
        """The calibration temperature of a classifier graph ("head" or "speech_classifier"): its logits are
        divided by it before the softmax. 1.0 for a bundle exported before calibration, or without one."""
        entry = (self.manifest.get("calibration") or {}).get(graph) or {}
        value = entry.get("temperature", 1.0) if isinstance(entry, dict) else 1.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1e6:
            raise BundleError(f"{self.root / MANIFEST_NAME}: calibration temperature of {graph} must be a positive "
                              f"number, got {value!r}")
        return float(value)

    @property
    def incremental_speech(self) -> dict | None:
        """The manifest's `incremental_speech` entry, or None (a bundle exported before it, or without speech).

        Keys: "graphs" (the split graphs written: `speech_frontend`, `speech_backend`, or none), "stride_samples",
        "receptive_field_samples", "chunk_frames", "locality" (what makes a frame depend on more than its
        samples), "parity" ({"encoder", "probabilities"}: max abs diff of the incremental pass against the
        whole-utterance graph), "bound" (the same keys), "within_bound". The split graphs are listed under
        "graphs" like the others but are not in `graph_names`: the whole `speech_encoder` stays the fallback.
        """
        entry = self.manifest.get("incremental_speech")
        return entry if isinstance(entry, dict) else None

    @property
    def dims(self) -> dict:
        """{"speech_hidden": D or None, "text_hidden": D or None}."""
        return dict(self.manifest.get("dims", {}))

    def has_graph(self, name: str, precision: str = "fp32") -> bool:
        """Whether the bundle holds graph `name` at `precision`."""
        return precision in self.manifest["graphs"].get(name, {})

    def precisions(self, name: str = "head") -> tuple[str, ...]:
        """Precisions built for graph `name`."""
        return tuple(p for p in PRECISIONS if self.has_graph(name, p))

    def _graph_entry(self, name: str, precision: str) -> dict:
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise BundleError(
                f"{self.root}: bundle (modality {self.modality}) has no {name} graph "
                f"(graphs: {', '.join(self.graph_names)})"
            )
        if precision not in graphs[name]:
            raise BundleError(
                f"{self.root}: bundle has no {precision} {name} graph; "
                f"re-export with: crab-rt export --checkpoint CKPT --out {self.root} --precision {precision}"
            )
        return graphs[name][precision]

    def graph_path(self, name: str, precision: str = "fp32") -> Path:
        """Path of an ONNX graph.

        Args:
            name: "speech_encoder", "text_encoder" or "head".
            precision: "fp32" or "fp16".

        Raises:
            BundleError: the graph or precision is not in this bundle (says how to build it).
        """
        return self.root / self._graph_entry(name, precision)["file"]

    def graph_io(self, name: str, precision: str = "fp32") -> dict:
        """{"inputs": {name: {"dtype", "shape"}}, "outputs": {...}} as recorded at export.

        Symbolic dimensions are strings ("batch", "samples", "frames", "tokens").

        Raises:
            BundleError: as `graph_path`.
        """
        entry = self._graph_entry(name, precision)
        return {"inputs": entry["inputs"], "outputs": entry["outputs"]}

    @property
    def tokenizer_path(self) -> Path | None:
        """`tokenizer.json`, or None for a speech-only bundle."""
        entry = self.manifest.get("tokenizer")
        return None if not entry else self.root / entry["file"]

    @property
    def has_torch_weights(self) -> bool:
        """Whether the bundle holds the torch weights (False when exported with --no-torch-weights)."""
        return bool(self.manifest.get("torch"))

    @property
    def torch_checkpoint_path(self) -> Path:
        """The model-only torch checkpoint (for the torch reference backend).

        Raises:
            BundleError: the bundle was exported without torch weights.
        """
        if not self.has_torch_weights:
            raise BundleError(NO_TORCH_WEIGHTS.format(root=self.root))
        return self.root / self.manifest["torch"]["file"]

    @property
    def max_audio_samples(self) -> int:
        """Longest waveform in samples (`max_audio_s * sample_rate`)."""
        return int(round(self.max_audio_s * self.sample_rate))


def _listed_files(manifest: dict) -> Iterator[tuple[str, str]]:
    """(relative file, sha256) for every file the manifest lists."""
    for per_precision in manifest["graphs"].values():
        for entry in per_precision.values():
            yield entry["file"], entry["sha256"]
    for key in ("tokenizer", "torch"):
        entry = manifest.get(key)
        if entry:
            yield entry["file"], entry["sha256"]
    for entry in (manifest.get("asr") or {}).get("files") or ():
        yield entry["file"], entry["sha256"]


def _inside(rel: object) -> bool:
    """Whether `rel` is a relative path that stays inside the bundle folder."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    parts = PurePosixPath(rel).parts
    return not PurePosixPath(rel).is_absolute() and ".." not in parts and parts[0] != "~"


def _asr_model(root: Path, manifest: dict) -> str | None:
    """The ASR model to run: a name, or the absolute path of the bundle's own ASR folder."""
    path = root / MANIFEST_NAME
    asr = manifest.get("asr") or {}
    if not isinstance(asr, dict):
        raise BundleError(f"{path}: malformed asr entry {asr!r}")
    folder = asr.get("folder")
    if folder is not None:
        if manifest["format_version"] < 2 or not _inside(folder):
            raise BundleError(f"{path}: asr folder {folder!r} must be a path inside the bundle")
        files = {PurePosixPath(e["file"]) for e in asr.get("files") or ()}
        missing = [n for n in ("model.bin", "config.json") if PurePosixPath(folder, n) not in files]
        if missing:
            raise BundleError(f"{path}: asr folder {folder!r} lists no {', '.join(missing)}")
        return str((root / folder).absolute())
    model = asr.get("model")
    if model is None:
        return None
    if not isinstance(model, str) or not model.strip():
        raise BundleError(f"{path}: malformed asr model {model!r}")
    if manifest["format_version"] < 2:
        if model.startswith((".", "~")) or "/" in model or "\\" in model:
            log.warning(
                "%s: format_version 1 records the ASR model as %r, given at export; a folder there is looked "
                "up from the current directory, not the bundle. Re-export to copy it into the bundle",
                root, model,
            )
    elif not _NAME_RE.match(model):
        raise BundleError(f"{path}: asr model {model!r} is not a model name (a local model is an asr folder)")
    return model


def _read_manifest(root: Path) -> dict:
    if not root.exists():
        raise BundleError(f"{root}: bundle folder not found")
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (a bundle is a folder with {MANIFEST_NAME})")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: manifest not found; is {root} a bundle written by crab-rt export?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a crab-rt bundle manifest (format must be {BUNDLE_FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: invalid format_version {version!r}")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format_version {version} is newer than this crab-rt reads "
            f"({BUNDLE_FORMAT_VERSION}); upgrade crab-rt or re-export"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: manifest lacks {', '.join(missing)}")
    if "head" not in manifest["graphs"]:
        raise BundleError(f"{path}: manifest lists no head graph")
    return manifest


def _check_labels(root: Path, manifest: dict) -> None:
    """The label list must match the head's class count (recorded output shapes, or `num_classes` if present)."""
    labels = manifest["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise BundleError(f"{root / MANIFEST_NAME}: labels must be a non-empty list of names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise BundleError(f"{root / MANIFEST_NAME}: labels {labels!r} repeat a name")
    counts = set()
    if isinstance(manifest.get("num_classes"), int):
        counts.add(manifest["num_classes"])
    for entry in (manifest["graphs"].get("head") or {}).values():
        for output in ((entry or {}).get("outputs") or {}).values():
            shape = (output or {}).get("shape") if isinstance(output, dict) else None
            if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[-1], int):
                counts.add(shape[-1])
    for count in sorted(counts):
        if count != len(labels):
            raise BundleError(f"{root}: bundle lists {len(labels)} labels but its model has {count} classes; "
                              "re-export the bundle")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle folder and check it.

    Args:
        path: the bundle folder.
        verify: hash every listed file and compare with the manifest (a few
            seconds for large models); without it only presence is checked.

    Returns:
        the `Bundle`.

    Raises:
        BundleError: missing folder or manifest, invalid JSON, wrong format or
            a newer format_version, a sample rate other than SAMPLE_RATE, a label
            count other than the head's class count, a listed file missing, a sha256 mismatch, or a
            calibration temperature that is not a positive number.
    """
    root = Path(path)
    manifest = _read_manifest(root)
    if manifest["sample_rate"] != SAMPLE_RATE:
        raise BundleError(
            f"{root}: bundle sample_rate is {manifest['sample_rate']!r} Hz, crab-rt runs at {SAMPLE_RATE} Hz"
        )
    _check_labels(root, manifest)
    try:
        listed = list(_listed_files(manifest))
    except (KeyError, TypeError, AttributeError) as e:
        raise BundleError(f"{root / MANIFEST_NAME}: malformed file entry ({e!r})") from e
    for rel, expected in listed:
        if not _inside(rel):
            raise BundleError(f"{root / MANIFEST_NAME}: listed file {rel!r} is not a path inside the bundle")
        file = root / rel
        if not file.is_file():
            raise BundleError(f"{file}: file listed in {MANIFEST_NAME} is missing")
        if verify and sha256_file(file) != expected:
            raise BundleError(f"{file}: sha256 mismatch with {MANIFEST_NAME} (file modified or corrupt); re-export")
    asr_model = _asr_model(root, manifest)
    bundle = Bundle(
        root=root,
        manifest=manifest,
        labels=tuple(manifest["labels"]),
        sample_rate=int(manifest["sample_rate"]),
        normalize_waveform=bool(manifest["normalize_waveform"]),
        max_audio_s=float(manifest["max_audio_s"]),
        max_text_tokens=int(manifest["max_text_tokens"]),
        modality=str(manifest["modality"]),
        shape_ranges=manifest["shape_ranges"],
        asr_model=asr_model,
    )
    if not isinstance(manifest.get("calibration") or {}, dict):
        raise BundleError(f"{root / MANIFEST_NAME}: calibration must be an object, got {manifest['calibration']!r}")
    for graph in ("head", "speech_classifier"):
        bundle.temperature(graph)  # a bad temperature fails here, not at the first utterance
    return bundle
