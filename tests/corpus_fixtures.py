"""Tiny corpus trees in the real IEMOCAP, MELD and MSP-Podcast 2.0 layouts, for tests."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np

from crab_rt.audio import write_wav


def tone(seconds: float = 0.2, freq: float = 220.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ----------------------------------------------------------------------------- IEMOCAP

# (session, dialog, [(turn, code, start, end, text)])
IEMOCAP_DIALOGS = [
    (
        1,
        "Ses01F_impro01",
        [
            ("Ses01F_impro01_F000", "neu", 6.2901, 8.2357, "Excuse me."),
            ("Ses01F_impro01_M000", "exc", 9.0100, 10.4000, "Do you have your forms?"),
            ("Ses01F_impro01_F001", "fru", 10.5000, 11.3925, "Yeah."),
            ("Ses01F_impro01_M001", "hap", 12.0000, 14.0000, "Let me see them."),
        ],
    ),
    (
        1,
        "Ses01F_script01_1",
        [
            ("Ses01F_script01_1_F000", "ang", 1.0, 3.5, "What the hell is that?"),
            ("Ses01F_script01_1_M000", "xxx", 4.0, 5.0, "Nothing."),
            ("Ses01F_script01_1_M001", "sad", 5.5, 7.0, "I'm sorry."),
        ],
    ),
    (
        2,
        "Ses02M_impro02",
        [
            ("Ses02M_impro02_F000", "sad", 2.0, 4.0, "I miss him."),
            ("Ses02M_impro02_M000", "neu", 4.5, 6.0, "I know."),
            ("Ses02M_impro02_M001", "fru", 6.5, 8.0, "It is hard."),
        ],
    ),
]


def _emo_block(turn: str, code: str, start: float, end: float) -> str:
    return (
        f"[{start:.4f} - {end:.4f}]\t{turn}\t{code}\t[2.5000, 3.0000, 2.0000]\n"
        "C-E2:\tNeutral;\t()\n"
        "C-E3:\tFrustration; Neutral;\t()\n"
        "C-F1:\tNeutral;\t(curious)\n"
        "A-E3:\tval 3; act 2; dom  2;\t()\n"
        "A-F1:\tval 3; act 2; dom  1;\t()\n"
        "\n"
    )


def make_iemocap(root: Path, skip_wav: tuple[str, ...] = (), corrupt_wav: tuple[str, ...] = ()) -> Path:
    """IEMOCAP_full_release-style tree under `root`; returns `root`."""
    for session, dialog, turns in IEMOCAP_DIALOGS:
        sdir = root / f"Session{session}"
        ev = sdir / "dialog" / "EmoEvaluation"
        ev.mkdir(parents=True, exist_ok=True)
        (ev / "Categorical").mkdir(exist_ok=True)  # real subfolders, to be ignored
        (ev / "Categorical" / f"{dialog}_e1_cat.txt").write_text(":Neutral state; ()\n")
        body = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        body += "".join(_emo_block(t, c, s, e) for t, c, s, e, _ in turns)
        (ev / f"{dialog}.txt").write_text(body)
        tr = sdir / "dialog" / "transcriptions"
        tr.mkdir(parents=True, exist_ok=True)
        lines = [f"{t} [{s:08.4f}-{e:08.4f}]: {text}" for t, _, s, e, text in turns]
        lines.insert(1, "M: [BREATHING]")
        (tr / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        for i, (t, *_rest) in enumerate(turns):
            wav = sdir / "sentences" / "wav" / dialog / f"{t}.wav"
            if t in skip_wav:
                continue
            if t in corrupt_wav:
                wav.parent.mkdir(parents=True, exist_ok=True)
                wav.write_bytes(b"RIFF\x00\x00garbage")
                continue
            write_wav(wav, tone(0.1, 200 + 20 * i))
    return root


# ----------------------------------------------------------------------------- MELD

MELD_HEADER = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]
# split -> [(utterance, speaker, emotion, dialogue, utterance_id)]
MELD_ROWS = {
    "train": [
        ("It\u2019s fine, really.", "Chandler", "neutral", 0, 0),
        ("Oh my God!", "Monica", "joy", 0, 1),
        ("Get out!", "Ross", "anger", 1, 0),
    ],
    "dev": [("Really?", "Rachel", "surprise", 0, 0)],
    "test": [
        ("I\u2019m so sorry.", "Phoebe", "sadness", 0, 0),
        ("What was that?", "Joey", "fear", 0, 1),
        ("Ew.", "Rachel", "disgust", 1, 0),
    ],
}
MELD_DIRS = {
    "train": "train/train_splits",
    "dev": "dev/dev_splits_complete",
    "test": "test/output_repeated_splits_test",
}


def write_mp4(path: Path, seconds: float = 0.3, sr: int = 44100) -> Path:
    """A real mp4 with a small mpeg4 video track and a stereo AAC audio track (like MELD's clips)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        a = out.add_stream("aac", rate=sr)
        a.layout = "stereo"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        n = int(seconds * sr)
        x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.float32)
        fs, pts = 1024, 0
        for s in range(0, n, fs):
            chunk = np.pad(x[s : s + fs], (0, max(0, fs - len(x[s : s + fs]))))
            fr = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
            fr.sample_rate, fr.pts = sr, pts
            pts += fs
            for p in a.encode(fr):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    return path


def make_meld(root: Path, skip: tuple[str, ...] = (), corrupt: tuple[str, ...] = ()) -> Path:
    """MELD.Raw-style tree at `root`; `skip`/`corrupt` name clips as "split/diaD_uttU".

    train_sent_emo.csv is written in cp1252 (its apostrophes become byte 0x92), the
    others in UTF-8, as in the wild.
    """
    root.mkdir(parents=True, exist_ok=True)
    template = None
    for split, rows in MELD_ROWS.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(MELD_HEADER)
        for i, (utt, spk, emo, d, u) in enumerate(rows, start=1):
            w.writerow([i, utt, spk, emo, "neutral", d, u, 3, 7, "00:14:38,127", "00:14:40,378"])
        enc = "cp1252" if split == "train" else "utf-8"
        (root / f"{split}_sent_emo.csv").write_bytes(buf.getvalue().encode(enc))
        media = root / MELD_DIRS[split]
        media.mkdir(parents=True, exist_ok=True)
        for *_, d, u in rows:
            key = f"{split}/dia{d}_utt{u}"
            mp4 = media / f"dia{d}_utt{u}.mp4"
            if key in skip:
                continue
            if key in corrupt:
                mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a real movie")
                continue
            if template is None:
                template = write_mp4(mp4)
            else:
                shutil.copyfile(template, mp4)
    return root


# ----------------------------------------------------------------------------- MSP-Podcast

MSP_HEADER = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
MSP_ROWS = [
    ("MSP-PODCAST_0001_0001.wav", "A", "5.2", "2.0", "5.0", "127", "Male", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "S", "2.0", "2.4", "3.0", "127", "Male", "Train"),
    ("MSP-PODCAST_0001_0003.wav", "H", "4.4", "5.8", "4.2", "128", "Female", "Train"),
    ("MSP-PODCAST_0001_0004.wav", "O", "4.0", "4.0", "4.0", "128", "Female", "Train"),
    ("MSP-PODCAST_0001_0005.wav", "X", "4.0", "4.0", "4.0", "128", "Female", "Train"),
    ("MSP-PODCAST_0002_0001.wav", "N", "4.0", "4.0", "4.0", "200", "Female", "Development"),
    ("MSP-PODCAST_0002_0002.wav", "C", "3.6", "3.0", "4.4", "200", "Female", "Development"),
    ("MSP-PODCAST_0003_0001.wav", "U", "5.0", "4.5", "4.0", "127", "Male", "Test1"),
    ("MSP-PODCAST_0004_0001.wav", "F", "5.0", "2.0", "2.5", "300", "Male", "Test2"),
    ("MSP-PODCAST_0004_0002.wav", "D", "4.5", "2.2", "4.5", "Unknown", "Unknown", "Test2"),
    ("MSP-PODCAST_test3_0001.wav", "", "", "", "", "", "", "Test3"),
    ("MSP-PODCAST_test3_0002.wav", "", "", "", "", "", "", "Test3"),
]


def make_msp(root: Path, skip: tuple[str, ...] = (), with_transcripts: tuple[str, ...] | None = None) -> Path:
    """MSP-Podcast 2.0-style tree at `root`. Transcripts only for Train rows unless given."""
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    with (root / "Labels" / "labels_consensus.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(MSP_HEADER)
        w.writerows(MSP_ROWS)
    for i, row in enumerate(MSP_ROWS):
        name, split = row[0], row[-1]
        if name not in skip:
            write_wav(root / "Audios" / name, tone(0.1, 150 + 10 * i))
        wants_text = split == "Train" if with_transcripts is None else name in with_transcripts
        if wants_text:
            (root / "Transcripts").mkdir(parents=True, exist_ok=True)
            (root / "Transcripts" / (Path(name).stem + ".txt")).write_text(f"words of {Path(name).stem}\n")
    return root
