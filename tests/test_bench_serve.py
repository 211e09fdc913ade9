"""The `serve` benchmark kind in tiny form: real server processes, real-time clients, output files that parse."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from crab_bench.cli import main

pytest.importorskip("websockets")
pytest.importorskip("prometheus_client")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_serve_tiny_end_to_end(tmp_path, tiny_bundle, capsys):
    rc = main(["serve", "--bundle", str(tiny_bundle), "--asr", "none", "--clients", "1,2", "--duration-s", "3",
               "--repeats", "1", "--warm-up-s", "0", "--threads", "1", "--out-dir", str(tmp_path), "--tag", "ci",
               "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()  # --quiet: only the output paths
    assert out and all(line.startswith("wrote ") and Path(line[6:]).is_file() for line in out), out
    data = json.loads((tmp_path / "serve_custom_ci.json").read_text(encoding="utf-8"))
    for key in ("name", "created", "command", "code", "machine", "process", "config", "kind", "server_command",
                "most_clients_p95_under_1s", "refusal_probe", "levels", "runs"):
        assert key in data, key
    assert data["kind"] == "serve" and data["asr"] == "no ASR (empty text)" and "--no-asr" in data["server_command"]
    assert data["server_max_streams"] == 2 and data["config"]["clients"] == [1, 2]
    assert [lv["clients"] for lv in data["levels"]] == [1, 2]
    assert [(r["clients"], r["repeat"]) for r in data["runs"]] == [(1, 0), (2, 0)]
    for run in data["runs"]:
        assert run["utterances_expected"] >= run["clients"]  # jfk.flac's first utterance, once per client
        assert run["events_received"] == run["utterances_expected"] == run["events_server_sent"]
        assert run["events_lost"] == 0 and run["dropped_utterances"] == 0 and run["dropped_messages"] == 0
        assert run["refused"] == 0 and run["streams_cut"] == 0 and run["client_errors"] == []
        assert run["error_messages"] == [] and run["server_log_problem_count"] == 0
        assert run["done_reasons"] == ["stop"] and run["server_exit_code"] == 0
        assert run["unmatched_events"] == 0
        for key in ("client_ms", "server_ms"):
            stats = run[key]
            assert stats["n"] == run["events_received"] and 0 < stats["p50"] <= stats["p95"] <= stats["max"]
        # the client sees the event after the server stamped it: loopback adds a little, never minus
        for client in run["per_client"]:
            for u in client["utterances"]:
                assert u["client_ms"] >= u["server_ms"] - 1.0 and u["capture_ms"] >= u["client_ms"]
        assert run["server_cpu_s"] is None or run["server_cpu_s_per_audio_s"] > 0
        assert run["audio_s"] > 3 * run["clients"]
    # staggered: the second client's first utterance ended 1.5 s (half a 3 s period) later than the first's
    ends = [c["utterances"][0]["speech_end_s"] for c in data["runs"][1]["per_client"]]
    assert ends[1] - ends[0] == pytest.approx(1.5, abs=0.07)
    # during the 2-client level (= --max-streams) one more connection was refused with 503
    assert data["runs"][0]["probe"] is None
    probe = data["runs"][1]["probe"]
    assert probe["status"] == 503 and probe["refused"] and "server full" in probe["body"]
    assert data["refusal_probe"] == {"runs": 1, "refused_503": 1, "statuses": [503]}
    level = data["levels"][1]
    assert level["events_received"] == level["utterances_expected"] and level["events_lost"] == 0
    assert set(level["client_ms"]["p95"]) == {"median", "min", "max"}
    md = (tmp_path / "serve_custom_ci.md").read_text(encoding="utf-8")
    assert md.startswith("# ") and "most streams this machine holds at p95 under 1 s" in md
    assert (tmp_path / "serve_custom_ci_vs_clients.png").read_bytes()[:8] == PNG_MAGIC


def test_serve_config_defaults_flags_and_validation():
    from crab_bench.cli import build_config, build_parser
    from crab_bench.serve_load import ServeBenchConfig
    from crab_rt.cli._options import OPTIONS_KEY
    from crab_rt.errors import ConfigError

    args = build_parser().parse_args(["serve"])
    assert build_config(args) == ServeBenchConfig()
    ServeBenchConfig().validate()
    options = getattr(args, OPTIONS_KEY)
    assert sorted(o.field for o in options.values()) == sorted(f.name for f in dataclasses.fields(ServeBenchConfig))
    config = build_config(build_parser().parse_args(["serve", "--clients", "1,3", "--no-realtime", "--no-probe",
                                                     "--asr", "none", "--max-streams", "5"]))
    assert config == ServeBenchConfig(clients=(1, 3), realtime=False, probe=False, asr="none", max_streams=5)
    assert config.server_max_streams == 5 and ServeBenchConfig(clients=(4, 2)).server_max_streams == 4
    for changes, match in [({"clients": (0,)}, r"^--clients must be in \[1, 256\], got 0$"),
                           ({"repeats": 0}, r"^--repeats must be in \[1, 100\], got 0$"),
                           ({"preset": "huge"}, r"^--preset 'huge' is not one of"),
                           ({"asr": "random:whisper-huge"}, "unknown random Whisper size 'huge'"),
                           ({"chunk_ms": 2.0}, r"^--chunk-ms must be in \[4, 1000\], got 2$")]:
        with pytest.raises(ConfigError, match=match):
            ServeBenchConfig(**changes).validate()


def test_client_audio_layout():
    from crab_bench.serve_load import client_audio

    speech = np.ones(16000, np.float32)  # 1 s
    audio = client_audio(speech, duration_s=2.5, gap_s=0.5, offset_s=0.25, tail_s=1.0)
    assert audio.dtype == np.float32 and audio.size == int(16000 * (0.25 + 2.5 + 1.0))
    voiced = np.flatnonzero(audio)
    # speech at 0.25-1.25 s and 1.75-2.75 s (the second loop, cut at 2.5 s of body), silence elsewhere
    assert voiced[0] == 4000 and voiced[-1] == 16000 * 2.75 - 1
    assert not audio[20000:28000].any()
