"""The microphone path through a real audio stack: PyAudio -> PortAudio -> ALSA's pulse plugin -> a private PulseAudio.

A private PulseAudio server (its own HOME and XDG_RUNTIME_DIR under the test's temp folder, reached only through its
unix socket) has a null sink `vmic`; its monitor is the "microphone". ALSA gets a `crabmic` PCM on that monitor, so
`crab-rt listen --device crabmic` records what `paplay --device=vmic` plays. Opt-in: everything skips unless
`make mic-stack` (root + apt) installed PulseAudio, the ALSA pulse plugin and PyAudio.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "samples" / "jfk.flac"
JFK_SPEECH = [(0.29, 2.27), (3.30, 4.38), (5.41, 7.65), (8.19, 11.0)]  # samples/README.md
SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"
DEFAULT_PA = """\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name=vmic rate=16000 channels=1
set-default-source vmic.monitor
"""
ASOUND_CONF = """\
pcm.crabmic {
    type pulse
    device "vmic.monitor"
}
"""


def _require_stack() -> None:
    try:
        import pyaudio  # noqa: F401
    except ImportError:
        pytest.skip("pyaudio is not installed: make mic-stack")
    missing = [tool for tool in ("pulseaudio", "paplay", "pactl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: make mic-stack (needs root and apt)")
    if not Path(SYSTEM_ALSA_CONF).is_file():
        pytest.skip(f"{SYSTEM_ALSA_CONF} not found: make mic-stack (needs root and apt)")


class PrivatePulse:
    """A private PulseAudio server with a null sink `vmic`, and the environment that reaches it (and ALSA's crabmic)."""

    def __init__(self, root: Path) -> None:
        home, runtime = root / "home", root / "run"
        home.mkdir()
        runtime.mkdir(mode=0o700)
        (root / "default.pa").write_text(DEFAULT_PA)
        (root / "asound.conf").write_text(ASOUND_CONF)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "ALSA_"))}
        env.pop("DISPLAY", None)
        env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime),
                   ALSA_CONFIG_PATH=f"{SYSTEM_ALSA_CONF}:{root / 'asound.conf'}")  # the system's first
        self.env = env
        self._stderr_path = root / "pulseaudio.stderr"
        self._stderr = open(self._stderr_path, "wb")
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(root / "default.pa"), "--daemonize=no", "--exit-idle-time=-1"],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
        )

    def stderr_tail(self, lines: int = 8) -> str:
        self._stderr.flush()
        return "\n".join(self._stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 10.0) -> str | None:
        """None once `pactl info` answers, else why not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"pulseaudio exited with {self.proc.returncode}"
            try:
                if subprocess.run(["pactl", "info"], env=self.env, capture_output=True, timeout=3).returncode == 0:
                    return None
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.2)
        return f"pactl info did not answer within {timeout_s:.0f} s"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        self._stderr.close()


def _start_pulse(root: Path) -> PrivatePulse:
    _require_stack()
    pulse = PrivatePulse(root)
    problem = pulse.wait_ready()
    if problem is not None:
        pulse.close()
        pytest.skip(f"the private pulseaudio cannot start: {problem}; its stderr:\n{pulse.stderr_tail()}")
    return pulse


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    p = _start_pulse(tmp_path_factory.mktemp("pulse"))
    yield p
    p.close()


def _default_sigint() -> None:
    # A parent started in the background (nohup, `cmd &` in a script) hands SIG_IGN down for SIGINT, and Python then
    # never raises KeyboardInterrupt: give the child the default, as a terminal's Ctrl-C would find it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Listen:
    """`crab-rt listen --device crabmic` as a subprocess; stderr goes to a file that can be read while it runs."""

    def __init__(self, pulse: PrivatePulse, bundle: Path, workdir: Path) -> None:
        self.stderr_path = workdir / "listen.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crab_rt.cli", "listen", "--device", "crabmic", "--bundle", str(bundle),
             "--no-asr", "--backend", "onnxruntime"],
            cwd=ROOT, env=pulse.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
            preexec_fn=_default_sigint,
        )

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def wait_recording(self, timeout_s: float = 30.0) -> None:
        """Until the pipeline is up (it prints the backend line just before recording starts)."""
        deadline = time.monotonic() + timeout_s
        while "crab-rt: backend" not in self.stderr():
            assert self.proc.poll() is None, f"listen exited early ({self.proc.returncode}):\n{self.stderr()}"
            assert time.monotonic() < deadline, f"listen did not start within {timeout_s:.0f} s:\n{self.stderr()}"
            time.sleep(0.1)

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            pytest.fail(f"listen did not exit within {timeout_s:.0f} s:\n{self.stderr()}")
        self._stderr.close()
        return self.proc.returncode, out.decode(), self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self._stderr.close()


@pytest.fixture
def jfk_wav(tmp_path) -> Path:
    """samples/jfk.flac as a 16-bit 16 kHz mono WAV, the format of the null sink (paplay then does not resample)."""
    import soundfile as sf

    from crab_rt.audio import load_audio

    path = tmp_path / "jfk.wav"
    sf.write(path, load_audio(JFK), 16000, subtype="PCM_16")
    return path


def test_devices_lists_crabmic_quietly(pulse):
    proc = subprocess.run([sys.executable, "-m", "crab_rt.cli", "devices"], cwd=ROOT, env=pulse.env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [line.split()[1] for line in proc.stdout.splitlines()[1:] if line[:5].strip().rstrip("*").isdigit()]
    assert "crabmic" in names, proc.stdout
    for noise in ("ALSA lib", "jack", "JackShm", "Cannot connect to server"):
        assert noise.lower() not in proc.stderr.lower(), proc.stderr


def test_listen_hears_jfk_through_pulseaudio(pulse, tiny_bundle, jfk_wav, tmp_path):
    listen = Listen(pulse, tiny_bundle, tmp_path)
    try:
        listen.wait_recording()
        time.sleep(3.0)  # past the pulse plugin's start delay (up to about 2 s before the first audio)
        subprocess.run(["paplay", "--device=vmic", str(jfk_wav)], env=pulse.env, check=True, timeout=30)
        time.sleep(3.0)  # the last utterance's hangover
        listen.proc.send_signal(signal.SIGINT)
        rc, out, err = listen.finish(timeout_s=20)
    finally:
        listen.close()
    assert rc == 0, err
    assert "Traceback" not in err, err
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    spans = [(e["start_s"], e["end_s"]) for e in events]
    # One offset for the whole run: the silence recorded before paplay started (the plugin's start delay and the
    # wait above). The first event starts at the first speech region plus that offset.
    assert 3 <= len(spans) <= 4, spans
    offset = spans[0][0] - JFK_SPEECH[0][0]
    assert 0.0 < offset < 10.0, spans
    starts = [s + offset for s, _ in JFK_SPEECH]
    for start, end in spans:
        nearest = min(starts, key=lambda s: abs(s - start))
        assert abs(start - nearest) <= 0.4, (spans, offset)
        assert end > start
    assert len({min(range(4), key=lambda i: abs(starts[i] - s)) for s, _ in spans}) == len(spans), (spans, offset)
    print(f"offset {offset:.3f} s; events {spans}")


def test_listen_exits_2_when_pulseaudio_dies(tiny_bundle, tmp_path):
    (tmp_path / "pulse").mkdir()
    own = _start_pulse(tmp_path / "pulse")
    listen = Listen(own, tiny_bundle, tmp_path)
    try:
        listen.wait_recording()
        time.sleep(2.5)  # recording, audio flowing
        assert listen.proc.poll() is None, listen.stderr()
        own.kill()  # SIGKILL: the server vanishes mid-stream
        started = time.monotonic()
        rc, _, err = listen.finish(timeout_s=8)
        took = time.monotonic() - started
    finally:
        listen.close()
        own.close()
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("crab-rt: error:"), err
    print(f"exit {rc} {took:.1f} s after SIGKILL: {lines[-1]}")
