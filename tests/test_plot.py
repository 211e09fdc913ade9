"""`crab-rt listen --plot`: the timeline PNG (crab_rt.plot) and the CLI flag around it.

The pictures are read back and measured: rows grow the image by one fixed height each, a band's colour shows
where its utterance is (in both rows when it crosses a row's end), and a missing matplotlib or a --plot that
cannot work is one line and exit 2 before anything loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crab_rt.cli import main
from crab_rt.errors import ConfigError, DependencyError
from crab_rt.runtime.events import EmotionEvent

mpimg = pytest.importorskip("matplotlib.image")
from crab_rt.plot import label_colours, plot_timeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "samples" / "jfk.flac"
SR = 16000
LABELS = ["neutral", "happy", "angry", "sad"]


def _event(i: int, start: float, end: float, label: str, confidence: float = 0.8, text: str = "",
           stage: str = "final", abstained: bool = False) -> EmotionEvent:
    rest = (1 - confidence) / (len(LABELS) - 1)
    probs = {name: (confidence if name == label else rest) for name in LABELS}
    return EmotionEvent("file", i, start, end, text, False, label, confidence, probs, stage=stage, abstained=abstained)


def _noise(seconds: float) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.1, int(seconds * SR)).astype(np.float32)


def _plot(tmp_path: Path, seconds: float, events: list[EmotionEvent], name: str, **kw) -> np.ndarray:
    speech = [(e.start_s + 0.1, e.end_s - 0.1) for e in events]
    out = plot_timeline(_noise(seconds), SR, speech, events, tmp_path / name, title=name, labels=LABELS, **kw)
    assert out == tmp_path / name and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(out)[..., :3]  # height x width x RGB(A), floats in [0, 1]


def _band_pixels(image: np.ndarray, label: str, alpha: float = 0.9) -> np.ndarray:
    """A mask of the pixels a band of `label` paints (its colour at the band's alpha over white)."""
    hex_colour = label_colours(LABELS)[label]
    rgb = np.array([int(hex_colour[i: i + 2], 16) / 255 for i in (1, 3, 5)])
    blended = alpha * rgb + (1 - alpha) * 1.0
    return np.all(np.abs(image - blended) < 0.02, axis=-1)


def test_rows_grow_the_image_by_one_fixed_height(tmp_path):
    events = [_event(0, 0.5, 2.5, "happy", 0.82, "i love this so much")]
    short = _plot(tmp_path, 3, events, "3s.png")
    two_rows = _plot(tmp_path, 61, events, "61s.png")
    ten_min = _event(1, 300, 304, "sad", 0.6, "so sad today")
    long = _plot(tmp_path, 600, [*events, ten_min], "600s.png")
    row = two_rows.shape[0] - short.shape[0]
    assert row > 100  # one row of a 60 s wrap: waveform over bands, readable at the saved dpi
    assert long.shape[0] - short.shape[0] == 9 * row  # 600 s: ten rows of 60 s
    assert short.shape[1] == two_rows.shape[1] == long.shape[1]  # rows wrap; the width stays
    assert short.shape[0] < 400 and long.shape[0] < 2500


def test_each_band_is_painted_in_its_labels_colour(tmp_path):
    happy = _plot(tmp_path, 3, [_event(0, 0.5, 2.5, "happy", 0.82, "i love this")], "happy.png")
    sad = _plot(tmp_path, 3, [_event(0, 0.5, 2.5, "sad", 0.7, "so sad")], "sad.png")
    assert _band_pixels(happy, "happy").sum() > 5000 and _band_pixels(happy, "sad").sum() == 0
    assert _band_pixels(sad, "sad").sum() > 5000 and _band_pixels(sad, "happy").sum() == 0
    # the band spans 0.5-2.5 s of a 3 s row: two thirds of the axis
    cols = np.flatnonzero(_band_pixels(happy, "happy").any(axis=0))
    assert 0.55 < (cols[-1] - cols[0]) / happy.shape[1] < 0.7


def test_an_utterance_across_a_rows_end_goes_on_in_the_next_row(tmp_path):
    one = _plot(tmp_path, 30, [_event(0, 10, 20, "angry")], "one.png", row_s=30)
    across = _plot(tmp_path, 60, [_event(0, 25, 35, "angry", text="a long utterance " * 6)], "across.png",
                   row_s=30)
    row = across.shape[0] - one.shape[0]
    header = one.shape[0] - row
    painted = _band_pixels(across, "angry").any(axis=1)
    assert painted[header: header + row].any() and painted[header + row:].any()


def test_provisional_events_stand_in_only_for_missing_finals_and_abstained_ones_are_faded(tmp_path):
    # a provisional event and its final, in either order: only the final's label is drawn
    provisional, final = _event(0, 0.5, 2.5, "sad", stage="provisional"), _event(0, 0.5, 2.5, "happy")
    for order in ([provisional, final], [final, provisional]):
        both = _plot(tmp_path, 3, order, "both.png")
        assert _band_pixels(both, "happy").sum() > 5000 and _band_pixels(both, "sad").sum() == 0
    alone = _plot(tmp_path, 3, [_event(0, 0.5, 2.5, "sad", stage="provisional")], "alone.png")
    assert _band_pixels(alone, "sad").sum() > 5000
    faded = _plot(tmp_path, 3, [_event(0, 0.5, 2.5, "happy", 0.3, abstained=True)], "faded.png")
    assert _band_pixels(faded, "happy").sum() == 0 and _band_pixels(faded, "happy", alpha=0.35).sum() > 1000


def test_no_speech_and_no_audio_still_draw_one_row(tmp_path):
    silent = _plot(tmp_path, 3, [], "silent.png")
    empty = plot_timeline(np.zeros(0, np.float32), SR, [], [], tmp_path / "empty.png")
    assert mpimg.imread(empty).shape[0] == silent.shape[0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sample_rate": 0}, "sample_rate must be positive"),
    ({"row_s": 0.0}, "row_s must be positive"),
    ({"audio": np.zeros((2, 100), np.float32)}, "must be one-dimensional"),
])
def test_bad_arguments_raise_config_errors(tmp_path, kwargs, message):
    args = {"audio": _noise(1), "sample_rate": SR, "speech": [], "events": [], "out": tmp_path / "x.png"} | kwargs
    with pytest.raises(ConfigError, match=message):
        plot_timeline(**args)


def _block_matplotlib(monkeypatch) -> None:
    """Make every matplotlib import fail, as on an install without the plot extra (submodules already loaded
    by other tests included: Python finds those in sys.modules without looking at the parent)."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_without_matplotlib_the_library_names_the_extra(monkeypatch, tmp_path):
    _block_matplotlib(monkeypatch)
    with pytest.raises(DependencyError, match=r"pip install 'crab-rt\[plot\]'"):
        plot_timeline(_noise(1), SR, [], [], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_listen_plot_is_one_line_before_anything_loads(monkeypatch, tmp_path, capsys):
    _block_matplotlib(monkeypatch)
    # The bundle does not exist: the plot extra is checked first, so its error is the one reported.
    code = main(["listen", "--bundle", str(tmp_path / "no-bundle"), "--input", str(JFK),
                 "--plot", str(tmp_path / "out.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["crab-rt: error: --plot: this feature needs 'matplotlib', which is not installed: "
                   "pip install 'crab-rt[plot]'"]
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "0", "--plot", "{out}"], "--plot draws a file's timeline: give --input FILE (not --device or --input -)"),
    (["--input", "-", "--plot", "{out}"], "--plot draws a file's timeline: give --input FILE (not --device or --input -)"),
    (["--plot", "{out}"], "give exactly one input"),
    (["--input", "{jfk}", "--plot", "{tmp}/out.svg"], "--plot {tmp}/out.svg: give a .png file name"),
    (["--input", "{jfk}", "--plot", "{tmp}"], "--plot {tmp}: is a folder; give a file name"),
    (["--input", "{jfk}", "--plot", "{tmp}/missing/out.png"], "--plot {tmp}/missing/out.png: folder {tmp}/missing does not exist"),
])
def test_listen_plot_refusals_are_one_line(tmp_path, capsys, args, message):
    paths = {"out": tmp_path / "out.png", "jfk": JFK, "tmp": tmp_path}
    args = [a.format(**paths) for a in args]
    code = main(["listen", "--bundle", str(tmp_path / "no-bundle"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("crab-rt: error: ") and message.format(**paths) in err[0], err


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, crab_rt.plot; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_listen_plot_writes_the_png_and_keeps_provisional_events(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "jfk.png"
    code = main(["listen", "--bundle", str(tiny_bundle), "--input", str(JFK), "--no-asr", "--backend", "onnxruntime",
                 "--provisional", "--min-confidence", "0.3", "--plot", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = [json.loads(line) for line in captured.out.splitlines()]
    stages = {e["stage"] for e in events}
    assert stages == {"provisional", "final"}  # stdout carries what it did without --plot
    assert captured.err.splitlines()[-1] == f"crab-rt: plot written to {out}"
    image = mpimg.imread(out)
    assert image.shape[0] < 400 and image.shape[1] > 1000  # 11 s of speech: one row
    # every final event's band is painted in its label's colour (faded where it abstained)
    tiny = label_colours(["a", "b", "c", "d"])
    finals = [e for e in events if e["stage"] == "final"]
    assert finals
    for e in finals:
        rgb = np.array([int(tiny[e["label"]][i: i + 2], 16) / 255 for i in (1, 3, 5)])
        alpha = 0.35 if e["abstained"] else 0.9
        assert np.all(np.abs(image[..., :3] - (alpha * rgb + 1 - alpha)) < 0.02, axis=-1).sum() > 500, e

    code = main(["listen", "--bundle", str(tiny_bundle), "--input", str(JFK), "--no-asr", "--backend", "onnxruntime",
                 "--quiet", "--plot", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and "plot written" not in err  # --quiet: the summary only
