"""The timeline picture of one run (`crab-rt listen --input FILE --plot out.png`).

Owns the drawing: the waveform, the speech regions the segmenter found, one band per utterance coloured by its
label with the label's probability, and the transcript. The timeline is wrapped into rows of at most `row_s`
seconds, so a 10-minute file is ten rows of one minute, each as readable as a short file's single row.
matplotlib (the `plot` extra) is imported inside the functions, on its Agg canvas without pyplot, so neither
importing this module nor drawing touches the application's own matplotlib backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crab_rt.errors import ConfigError, missing_dependency
from crab_rt.runtime.events import EmotionEvent

__all__ = ["ROW_S", "DPI", "check_matplotlib", "label_colours", "plot_timeline"]

ROW_S = 60.0  # seconds per row: a 10-minute file is 10 rows
DPI = 110
_WIDTH_IN = 16.0
_ROW_IN = 1.9  # one row: waveform over the utterance bands, and the time axis
_HEADER_IN = 0.5  # title and legend
_LEFT_IN, _RIGHT_IN = 0.35, 0.25
# Row axes data coordinates: the bands fill [0, 1], the waveform [1.1, 2.1] around 1.6.
_BAND_TOP, _WAVE_MID, _WAVE_HALF, _Y_TOP = 1.0, 1.6, 0.48, 2.12
_LABEL_PT, _TEXT_PT = 8.0, 7.0
_TEXT_LINES = 2  # transcript lines under the label in each band
# Fixed colours for the usual emotion names, so that "angry" is red in every picture; other labels take the
# remaining tab10 colours in the bundle's order.
_KNOWN_COLOURS = {
    "neutral": "#9e9e9e", "happy": "#f2b01e", "angry": "#d93025", "sad": "#3f7fe0", "frustrated": "#e8710a",
    "excited": "#e85d9a", "surprise": "#8e44ad", "surprised": "#8e44ad", "fear": "#00897b", "fearful": "#00897b",
    "disgust": "#6d4c41", "disgusted": "#6d4c41", "contempt": "#5d6d7e", "calm": "#7cb342",
}
_OTHER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                  "#7f7f7f", "#d62728")
_SPEECH_COLOUR = "#cdebd3"
_WAVE_COLOUR = "#4a4a4a"


def check_matplotlib() -> None:
    """Import matplotlib's Agg canvas, as `plot_timeline` will.

    Raises:
        DependencyError: matplotlib is not installed; the message names the `plot` extra.
    """
    _import_matplotlib()


def _import_matplotlib() -> tuple[Any, Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as e:
        raise missing_dependency("matplotlib", "plot") from e
    return Figure, FigureCanvasAgg, Patch


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """A fixed colour per label: the usual emotion names keep theirs, the others take tab10's in order."""
    used = {_KNOWN_COLOURS[name.lower()] for name in labels if name.lower() in _KNOWN_COLOURS}
    spare = iter(c for c in _OTHER_COLOURS if c not in used)
    return {name: _KNOWN_COLOURS.get(name.lower()) or next(spare, "#7f7f7f") for name in labels}


@dataclass(frozen=True)
class _Band:
    """The part of one utterance's band that falls in one row."""

    start_s: float
    end_s: float
    event: EmotionEvent
    voice_only: bool  # a provisional event standing in for a final that never came


def _utterance_events(events: Sequence[EmotionEvent]) -> list[tuple[EmotionEvent, bool]]:
    """One event per utterance: the final one, else its provisional one (flagged), in time order."""
    chosen: dict[tuple[str, int], EmotionEvent] = {}
    for e in events:
        key = (e.stream_id, e.utterance_id)
        if e.stage == "final" or key not in chosen:
            chosen[key] = e
    return sorted(((e, e.stage != "final") for e in chosen.values()), key=lambda p: (p[0].start_s, p[0].end_s))


def _envelope(audio: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of `audio` over `bins` equal slices (a waveform drawn at pixel resolution, not per sample)."""
    if audio.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    bins = max(1, min(bins, audio.size))
    edges = np.linspace(0, audio.size, bins + 1).astype(np.int64)
    return np.minimum.reduceat(audio, edges[:-1]), np.maximum.reduceat(audio, edges[:-1])


def _clock(seconds: float, long: bool) -> str:
    if not long:
        return f"{seconds:g}"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _fit(text: str, chars: int) -> str:
    """`text` cut to `chars` characters, with an ellipsis where something was cut ('' when nothing fits)."""
    if len(text) <= chars:
        return text
    return text[: chars - 1].rstrip() + "\u2026" if chars >= 2 else ""


def _wrap(text: str, chars: int, lines: int) -> tuple[list[str], str]:
    """Up to `lines` lines of at most `chars` characters, words kept whole where they fit a line; and the rest
    of `text` that did not fit (the last line then ends in an ellipsis)."""
    if chars < 3 or not text:
        return [], text
    out: list[str] = []
    rest = text.strip()
    while rest and len(out) < lines:
        if len(rest) <= chars:
            out.append(rest)
            rest = ""
            break
        cut = rest.rfind(" ", 0, chars + 1)
        if cut <= 0:  # a word longer than the line: break it
            cut = chars
        out.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        out[-1] = _fit(out[-1] + " " + rest, chars)
    return out, rest


def _text_colour(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i: i + 2], 16) / 255 for i in (1, 3, 5))
    return "#111111" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def plot_timeline(audio: np.ndarray, sample_rate: int, speech: Sequence[tuple[float, float]],
                  events: Sequence[EmotionEvent], out: str | Path, title: str | None = None,
                  labels: Sequence[str] | None = None, row_s: float = ROW_S) -> Path:
    """Draw a run's timeline as a PNG: waveform, speech regions, one labelled band per utterance, transcript.

    Rows hold at most `row_s` seconds (a shorter input is one row of its own length); the figure grows one row
    at a time. Each utterance's band (its event's span) is coloured by its label and reads "label 0.82" (the
    label's probability) over its transcript, both cut with an ellipsis to the band's width; a band that
    crosses a row's end goes on in the next row with the rest of the text. Abstained events are hatched and
    faded. Only final events are drawn; a provisional event stands in for an utterance with no final one.

    Args:
        audio: the mono samples the stream heard (any float dtype).
        sample_rate: their rate in Hz.
        speech: speech regions as (start_s, end_s), e.g. from the segmenter's `SpeechMark`s.
        events: the run's events (provisional ones included or not).
        out: the PNG to write.
        title: the line above the picture (None: no title, the legend only).
        labels: the bundle's labels, for the legend and their colours (None: those the events name).
        row_s: seconds per row.

    Returns:
        `out`, as a Path.

    Raises:
        ConfigError: sample_rate or row_s is not positive, or audio is not one-dimensional.
        DependencyError: matplotlib (the `plot` extra) is not installed.
    """
    if sample_rate <= 0:
        raise ConfigError(f"sample_rate must be positive, got {sample_rate!r}")
    if not row_s > 0:
        raise ConfigError(f"row_s must be positive, got {row_s!r}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ConfigError(f"audio must be one-dimensional (mono), got shape {audio.shape}")
    Figure, FigureCanvasAgg, Patch = _import_matplotlib()

    out = Path(out)
    chosen = _utterance_events(events)
    duration = max(audio.size / sample_rate, max((e.end_s for e, _ in chosen), default=0.0),
                   max((end for _, end in speech), default=0.0))
    row_len = min(row_s, duration) if duration > 0 else 1.0
    rows = max(1, math.ceil(duration / row_len - 1e-9))
    long = rows > 1
    if labels is None:
        seen = dict.fromkeys(k for e, _ in chosen for k in e.probabilities)
        labels = list(dict.fromkeys([*seen, *(e.label for e, _ in chosen)]))
    colours = label_colours([*labels, *(e.label for e, _ in chosen if e.label not in labels)])
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    scale = _WAVE_HALF / peak if peak > 0 else 0.0

    height = _HEADER_IN + rows * _ROW_IN
    fig = Figure(figsize=(_WIDTH_IN, height), dpi=DPI)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    axes_w_in = _WIDTH_IN - _LEFT_IN - _RIGHT_IN
    axes_w_px = axes_w_in * DPI
    char_px = {"label": _char_width_px(fig, renderer, _LABEL_PT, "bold"),
               "text": _char_width_px(fig, renderer, _TEXT_PT, "normal")}

    remaining: dict[tuple[str, int], str] = {}  # transcript words not yet shown, per utterance split across rows
    for row in range(rows):
        t0 = row * row_len
        t1 = t0 + row_len
        bottom_in = height - _HEADER_IN - (row + 1) * _ROW_IN
        ax = fig.add_axes((_LEFT_IN / _WIDTH_IN, (bottom_in + 0.32) / height, axes_w_in / _WIDTH_IN,
                           (_ROW_IN - 0.42) / height))
        ax.set_xlim(t0, t1)
        ax.set_ylim(-0.04, _Y_TOP)
        ax.set_yticks([])
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="x", labelsize=7, length=3, pad=2)
        _time_ticks(ax, t0, t1, long)

        wave_lo = (_BAND_TOP + 0.06 + 0.04) / (_Y_TOP + 0.04)
        for start, end in speech:
            if end > t0 and start < t1:
                ax.axvspan(max(start, t0), min(end, t1), ymin=wave_lo, ymax=1.0, color=_SPEECH_COLOUR, lw=0,
                           zorder=0)
        a, b = int(t0 * sample_rate), min(int(t1 * sample_rate), audio.size)
        if b > a:
            width_frac = (b - a) / sample_rate / row_len
            lo, hi = _envelope(audio[a:b], int(axes_w_px * width_frac))
            x = t0 + (np.arange(lo.size) + 0.5) * ((b - a) / sample_rate / max(lo.size, 1))
            ax.fill_between(x, _WAVE_MID + lo * scale, _WAVE_MID + hi * scale, color=_WAVE_COLOUR, lw=0.4,
                            step="mid", zorder=2)
        ax.axhline(_WAVE_MID, color="#bbbbbb", lw=0.5, zorder=1)
        ax.axhline(0.0, color="#dddddd", lw=0.6, zorder=1)

        for event, voice_only in chosen:
            if event.end_s <= t0 or event.start_s >= t1:
                continue
            band = _Band(max(event.start_s, t0), min(event.end_s, t1), event, voice_only)
            continued = event.start_s < t0
            text = remaining.pop((event.stream_id, event.utterance_id), None) if continued else event.text.strip()
            rest = _draw_band(ax, band, colours, axes_w_px / row_len, char_px, continued, text or "")
            if event.end_s > t1 and rest:
                remaining[(event.stream_id, event.utterance_id)] = rest

    _legend(fig, Patch, labels, colours, chosen, height)
    if title:
        fig.text(_LEFT_IN / _WIDTH_IN, 1 - 0.12 / height, title, ha="left", va="top", fontsize=10,
                 fontweight="bold")
    fig.savefig(out, format="png", dpi=DPI)
    fig.clear()
    return out


def _char_width_px(fig: Any, renderer: Any, points: float, weight: str) -> float:
    """The average character width of the default font at `points`, in pixels (measured, not guessed)."""
    sample = "the quick brown fox jumps over a lazy dog, Ask NOT what 0.82"
    t = fig.text(0, 0, sample, fontsize=points, fontweight=weight)
    width = t.get_window_extent(renderer).width / len(sample)
    t.remove()
    return width


def _time_ticks(ax: Any, t0: float, t1: float, long: bool) -> None:
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    span = t1 - t0
    step = next((s for s in (0.5, 1, 2, 5, 10, 15, 30, 60) if span / s <= 16), 60.0)
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_minor_locator(MultipleLocator(step / 5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _clock(v, long) + ("" if long else " s")))


def _draw_band(ax: Any, band: _Band, colours: dict[str, str], px_per_s: float, char_px: dict[str, float],
               continued: bool, text: str) -> str:
    """One utterance's band in one row, its label line and as much transcript as fits; returns the rest."""
    from matplotlib.patches import Rectangle

    e = band.event
    colour = colours.get(e.label, "#7f7f7f")
    faded = e.abstained
    rect = Rectangle((band.start_s, 0.0), band.end_s - band.start_s, _BAND_TOP, facecolor=colour,
                     alpha=0.35 if faded else 0.9, edgecolor="#333333" if faded or band.voice_only else "white",
                     hatch="///" if faded else None, lw=0.6, linestyle="--" if band.voice_only else "-", zorder=3)
    ax.add_patch(rect)
    ink = "#111111" if faded else _text_colour(colour)
    width_px = (band.end_s - band.start_s) * px_per_s - 4  # a little margin on each side
    x = band.start_s + 2 / px_per_s

    label_chars = int(width_px / char_px["label"])
    label = f"{e.label} {e.confidence:.2f}"
    if band.voice_only:
        label += " (voice only)"
    if e.abstained:
        label += " (abstained)"
    if continued:
        label = "\u2026" + label
    if len(label) > label_chars:  # narrow band: without the notes, else the probability alone (colour: label)
        short = f"{e.label} {e.confidence:.2f}"
        prob = f"{e.confidence:.2f}"
        label = next((c for c in (short, prob, prob.lstrip("0")) if len(c) <= label_chars), "")
    if label:
        t = ax.text(x, 0.82, label, fontsize=_LABEL_PT, fontweight="bold", color=ink, ha="left", va="center",
                    zorder=4)
        t.set_clip_path(rect)
    text_chars = int(width_px / char_px["text"])
    lines, rest = _wrap(("\u2026" if continued and text else "") + text, text_chars, _TEXT_LINES)
    for i, line in enumerate(lines):
        t = ax.text(x, 0.55 - i * 0.27, line, fontsize=_TEXT_PT, color=ink, ha="left", va="center", zorder=4)
        t.set_clip_path(rect)
    return rest


def _legend(fig: Any, Patch: Any, labels: Sequence[str], colours: dict[str, str],
            chosen: list[tuple[EmotionEvent, bool]], height: float) -> None:
    handles = [Patch(facecolor=colours[name], edgecolor="white", label=name) for name in labels]
    handles.append(Patch(facecolor=_SPEECH_COLOUR, label="speech (VAD)"))
    if any(e.abstained for e, _ in chosen):
        handles.append(Patch(facecolor="#bbbbbb", alpha=0.5, hatch="///", edgecolor="#333333", label="abstained"))
    if any(voice_only for _, voice_only in chosen):
        handles.append(Patch(facecolor="white", edgecolor="#333333", linestyle="--", label="voice only"))
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(1 - _RIGHT_IN / _WIDTH_IN, 1 - 0.06 / height),
               ncol=len(handles), fontsize=8, frameon=False, handlelength=1.4, columnspacing=1.2)
