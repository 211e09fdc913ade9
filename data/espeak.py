"""espeak-ng speech, offline: text in, 16 kHz float32 mono out.

The library and its voice data come from the `espeakng-loader` wheel (the
`[demo]` extra; no system package), imported only when speech is made. Calls go
through ctypes to espeak-ng's synchronous API: `espeak_Initialize` (22050 Hz
output), a synthesis callback that collects the 16-bit samples,
`espeak_SetVoiceByName` ("en-us", "en-gb-x-rp+f2", ...), `espeak_SetParameter`
for rate, volume, pitch, pitch range and word gap, `espeak_Synth` and
`espeak_Synchronize`; the samples are resampled to 16 kHz with soxr.

espeak-ng keeps process-global state: one voice and one set of parameters at a
time, and inside its wave generator the pitch phase, the flutter index, the
gain control and its random generator carry over from one utterance to the
next, so the same text with the same settings comes out a few milliseconds
longer or shorter and with different samples depending on what was spoken
before (measured with 1.52: three calls gave 51588, 51798 and 51792 samples),
and `espeak_Terminate` does not reset it. So `Espeak` (one per process,
`get_espeak()`) serializes every utterance behind one lock and loads the
library afresh for it (dlopen, initialize, speak, terminate, dlclose: about
5 ms): every utterance is then a function of its text and `EspeakVoice` alone,
byte for byte, whatever the order.

espeak-ng accepts any "+variant" suffix silently and speaks the base voice when
the variant file is missing; `Espeak.check` looks the language voice and the
variant up in the data folder first and names what exists.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crab_rt.audio import SAMPLE_RATE, to_mono_16k
from crab_rt.errors import ConfigError, DependencyError, requires_extra

__all__ = ["ESPEAK_SAMPLE_RATE", "EspeakVoice", "Espeak", "get_espeak"]

log = logging.getLogger(__name__)

ESPEAK_SAMPLE_RATE = 22050  # what espeak-ng 1.52 reports from espeak_Initialize (the rate it returns is used)

# espeak_lib.h (speak_lib.h) constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit(1)
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()
_RAND_SEED = 0
_INSTANCE: Espeak | None = None


@dataclass(frozen=True)
class EspeakVoice:
    """How espeak-ng speaks one utterance.

    Attributes:
        language: a language voice of the data folder's lang/ tree, e.g. "en-us", "en"
            (British), "en-gb-x-rp", "en-029" (Caribbean), "en-gb-scotland", "en-us-nyc".
        variant: a file of voices/!v, e.g. "m1".."m8", "f1".."f5"; None for the plain voice.
        rate_wpm: speaking rate, espeak-ng's words per minute, 80 to 450.
        volume: espeak-ng's amplitude, 0 to 200 (100 is its default; above about 100
            loud voices clip and its gain control kicks in).
        pitch: base pitch, 0 to 99 (50 is the voice's own).
        pitch_range: pitch range, 0 (monotone) to 99 (50 is the voice's own).
        word_gap: extra pause between words, in units of 10 ms at the default rate.
    """

    language: str = "en-us"
    variant: str | None = None
    rate_wpm: int = 175
    volume: int = 100
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0

    @property
    def name(self) -> str:
        """What espeak_SetVoiceByName gets: "language" or "language+variant"."""
        return self.language if not self.variant else f"{self.language}+{self.variant}"

    def validate(self) -> EspeakVoice:
        """Check the numeric ranges; returns self.

        Raises:
            ConfigError: naming the field, its value and the range.
        """
        for name, lo, hi in (("rate_wpm", 80, 450), ("volume", 0, 200), ("pitch", 0, 99),
                             ("pitch_range", 0, 99), ("word_gap", 0, 100)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"espeak voice: {name}={value!r} must be an integer in [{lo}, {hi}]")
        for name in ("language", "variant"):
            value = getattr(self, name)
            if value is None and name == "variant":
                continue
            if not isinstance(value, str) or not value or any(c in value for c in "+/\\ \0"):
                raise ConfigError(f"espeak voice: {name}={value!r} is not a voice name")
        return self


class Espeak:
    """The espeak-ng library of `espeakng-loader`; use `get_espeak()` for the process's one instance.

    Raises (on construction):
        DependencyError: espeakng_loader is not installed (one line naming `crab-rt[demo]`),
            or its library or data folder is missing.
    """

    def __init__(self) -> None:
        with requires_extra("demo", "espeakng_loader"):
            import espeakng_loader
        self.library_path = Path(espeakng_loader.get_library_path())
        self.data_path = Path(espeakng_loader.get_data_path())
        if not self.library_path.is_file() or not (self.data_path / "phontab").is_file():
            raise DependencyError(
                f"espeak-ng library or data not found ({self.library_path}, {self.data_path}): "
                "reinstall 'crab-rt[demo]'"
            )
        self._languages = {p.name.lower() for p in (self.data_path / "lang").rglob("*") if p.is_file()}
        self._variants = {p.name for p in (self.data_path / "voices" / "!v").glob("*") if p.is_file()}

    @property
    def languages(self) -> tuple[str, ...]:
        """Language voices of the data folder (lower case), e.g. "en-us", "en-gb-x-rp"."""
        return tuple(sorted(self._languages))

    @property
    def variants(self) -> tuple[str, ...]:
        """Voice variants of the data folder, e.g. "m1", "f2", "klatt"."""
        return tuple(sorted(self._variants))

    def check(self, voice: EspeakVoice) -> EspeakVoice:
        """Validate `voice` and check that its language and variant exist; returns it.

        Raises:
            ConfigError: a value out of range, or an unknown language or variant.
        """
        voice.validate()
        if voice.language.lower() not in self._languages:
            english = ", ".join(v for v in self.languages if v.startswith("en"))
            raise ConfigError(f"espeak voice: unknown language {voice.language!r} (English ones: {english})")
        if voice.variant is not None and voice.variant not in self._variants:
            some = ", ".join(sorted(v for v in self._variants if len(v) == 2))
            raise ConfigError(f"espeak voice: unknown variant {voice.variant!r} (e.g. {some})")
        return voice

    def speak(self, text: str, voice: EspeakVoice = EspeakVoice()) -> np.ndarray:
        """Speak `text`; returns float32 mono audio at 16 kHz (espeak-ng's own leading and trailing
        silence kept: none before, a few ms after).

        Raises:
            ConfigError: `voice` is invalid or unknown, or `text` is empty.
            DependencyError: the library cannot be loaded or initialized.
        """
        self.check(voice)
        if not text.strip():
            raise ConfigError("espeak: nothing to say (empty text)")
        data = text.encode("utf-8") + b"\0"
        chunks: list[np.ndarray] = []

        def collect(wav, n, events) -> int:  # espeak-ng's callback signature
            if n > 0 and wav:
                chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
            return 0

        callback = _SYNTH_CALLBACK(collect)
        with _LOCK:
            lib = self._load()
            try:
                rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(self.data_path),
                                             _INITIALIZE_DONT_EXIT)
                if rate <= 0:
                    raise DependencyError(
                        f"espeak-ng did not initialize from {self.data_path} (error {rate}): "
                        "reinstall 'crab-rt[demo]'"
                    )
                lib.espeak_SetSynthCallback(callback)
                status = lib.espeak_SetVoiceByName(voice.name.encode("ascii"))
                if status != 0:
                    raise ConfigError(f"espeak voice: espeak-ng cannot select {voice.name!r} (error {status})")
                for param, value in ((_PARAM_RATE, voice.rate_wpm), (_PARAM_VOLUME, voice.volume),
                                     (_PARAM_PITCH, voice.pitch), (_PARAM_RANGE, voice.pitch_range),
                                     (_PARAM_WORDGAP, voice.word_gap)):  # fmt: skip
                    lib.espeak_SetParameter(param, value, 0)
                # Voices add noise (breath, flutter) from espeak-ng's own generator, which it seeds from the
                # clock: seed it, so that the audio depends only on the text and the voice.
                lib.espeak_ng_SetRandSeed(ctypes.c_long(_RAND_SEED))
                status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                lib.espeak_Synchronize()
                if status != 0:
                    raise DependencyError(f"espeak-ng failed to speak {text[:40]!r} (error {status})")
            finally:
                lib.espeak_Terminate()
                self._unload(lib)
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return to_mono_16k(pcm, rate, SAMPLE_RATE)

    def _load(self) -> ctypes.CDLL:
        try:
            lib = ctypes.CDLL(str(self.library_path))
        except OSError as e:
            raise DependencyError(f"espeak-ng could not be loaded ({e}): reinstall 'crab-rt[demo]'") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        return lib

    @staticmethod
    def _unload(lib: ctypes.CDLL) -> None:
        """dlclose the library so that the next utterance starts from espeak-ng's initial state."""
        import _ctypes

        handle = lib._handle
        close = getattr(_ctypes, "FreeLibrary" if sys.platform == "win32" else "dlclose", None)
        if close is None:  # the state then carries over: still speech, no longer byte-reproducible
            log.debug("espeak: cannot unload %s on this platform", lib._name)
            return
        close(handle)


def get_espeak() -> Espeak:
    """The process's one `Espeak` (made on first use, under a lock).

    Raises:
        DependencyError: espeakng_loader is missing (one line naming `crab-rt[demo]`).
    """
    global _INSTANCE
    with _LOCK:
        if _INSTANCE is None:
            _INSTANCE = Espeak()
        return _INSTANCE
