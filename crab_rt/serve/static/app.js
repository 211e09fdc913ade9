// crab-rt page: the microphone (getUserMedia + an AudioWorklet) or a local audio file, sent as f32le PCM over
// the server's WebSocket protocol (docs/protocol.md, version 1.1), and one timeline row per utterance.
// Plain JavaScript, no build step, nothing from another origin.
"use strict";

const PROTOCOL = 1.1;
const FILE_RATE = 16000; // a file is decoded and resampled by the browser to 16 kHz mono
const CHUNK_S = 0.05; // 50 ms per message
const MAX_QUEUED_S = 5; // audio held while the socket opens; beyond it, the oldest is dropped (and said)
const COLORS = { // label -> colour of its band; other labels take the palette in order
  angry: "#c62828", anger: "#c62828", happy: "#e0a100", happiness: "#e0a100", joy: "#e0a100",
  neutral: "#757575", sad: "#1565c0", sadness: "#1565c0", fear: "#6a1b9a", fearful: "#6a1b9a",
  disgust: "#2e7d32", disgusted: "#2e7d32", surprise: "#ef6c00", surprised: "#ef6c00", calm: "#00838f",
  frustrated: "#ad1457", excited: "#f9a825", contempt: "#5d4037",
};
const PALETTE = ["#1565c0", "#c62828", "#2e7d32", "#e0a100", "#6a1b9a", "#00838f", "#ef6c00", "#5d4037"];

class UiError extends Error {
  constructor(message, focus) { super(message); this.focus = focus; }
}

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("controls"), start: $("start"), stop: $("stop"), clear: $("clear"), token: $("token"),
  file: $("file"), fileRow: $("file-row"), provisional: $("provisional"), status: $("status"),
  alert: $("alert"), speaking: $("speaking"), speakingText: $("speaking-text"), timeline: $("timeline"),
  serverInfo: $("server-info"),
};

let session = null; // the stream in progress, or null

// ---- server ---------------------------------------------------------------------------------------------------
function authHeaders() {
  const token = ui.token.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// GET /admit: the refusal the WebSocket handshake would give (the browser hides a failed handshake's status).
async function admit() {
  let response;
  try {
    response = await fetch("/admit", { headers: authHeaders(), cache: "no-store" });
  } catch (e) {
    throw new UiError(`Cannot reach the crab-rt server at ${location.host} (${e.message}).`);
  }
  const text = (await response.text()).trim();
  if (response.status === 401) {
    const what = ui.token.value.trim() ? "The token is wrong" : "This server needs a token";
    throw new UiError(`Refused (401 Unauthorized): ${what}. Enter the server's token and press Start. ` +
      `(Server: ${text})`, ui.token);
  }
  if (response.status === 503) {
    throw new UiError(`The server cannot take a stream now (503 Service Unavailable): ${text}`);
  }
  if (!response.ok) throw new UiError(`Unexpected answer from the server: ${response.status} ${text}`);
  const info = JSON.parse(text);
  if (!(info.protocol >= 1 && info.protocol < 2)) {
    throw new UiError(`Wrong protocol: the server speaks protocol ${info.protocol}; this page speaks 1 and 1.1.`);
  }
  return info;
}

function describeServer(info) {
  const parts = [info.server, `labels: ${info.labels.join(", ")}`, info.backend];
  if (!info.asr) parts.push("no ASR (no words)");
  ui.serverInfo.textContent = parts.join(" · ");
  ui.provisional.disabled = !info.provisional;
  if (!info.provisional) {
    ui.provisional.checked = false;
    ui.provisional.parentElement.title = "This server's bundle has no voice-only classifier";
  }
}

// ---- audio sources --------------------------------------------------------------------------------------------
async function openMicrophone(send) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new UiError("The microphone needs a secure page: open it at http://127.0.0.1 or http://localhost, " +
      "or over https:// (crab-rt serve --tls-cert ... --tls-key ...).");
  }
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    if (e.name === "NotAllowedError" || e.name === "SecurityError") {
      throw new UiError("Microphone access was denied. Allow this page to use the microphone (the icon at the " +
        "left of the address bar), then press Start again.");
    }
    if (e.name === "NotFoundError" || e.name === "OverconstrainedError") {
      throw new UiError("No microphone was found. Plug one in, or stream an audio file instead.");
    }
    throw new UiError(`The microphone could not be opened (${e.name}: ${e.message}).`);
  }
  const context = new AudioContext();
  try {
    await context.audioWorklet.addModule("/static/pcm-worklet.js");
  } catch (e) {
    media.getTracks().forEach((t) => t.stop());
    await context.close();
    throw new UiError(`The audio worklet could not be loaded (${e.message}).`);
  }
  const source = context.createMediaStreamSource(media);
  const tap = new AudioWorkletNode(context, "crab-pcm-tap", {
    numberOfInputs: 1, numberOfOutputs: 0,
    processorOptions: { chunkFrames: Math.round(context.sampleRate * CHUNK_S) },
  });
  tap.port.onmessage = (message) => send(message.data);
  source.connect(tap);
  media.getAudioTracks()[0].addEventListener("ended", () => fail("The microphone was disconnected."));
  return {
    sampleRate: context.sampleRate,
    describe: `the microphone at ${context.sampleRate} Hz`,
    close() {
      tap.port.onmessage = null;
      source.disconnect();
      media.getTracks().forEach((t) => t.stop());
      context.close();
    },
  };
}

async function openFile(send, ended) {
  const file = ui.file.files[0];
  if (!file) throw new UiError("Choose an audio file first.", ui.file);
  let decoded;
  try {
    const offline = new OfflineAudioContext(1, 1, FILE_RATE);
    decoded = await offline.decodeAudioData(await file.arrayBuffer());
  } catch (e) {
    throw new UiError(`${file.name}: the browser cannot decode this audio (${e.message || e.name}).`, ui.file);
  }
  const mono = new Float32Array(decoded.length);
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    const channel = decoded.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / decoded.numberOfChannels;
  }
  const player = new Audio(URL.createObjectURL(file)); // what is streamed is also heard
  player.play().catch(() => {});
  const step = Math.round(FILE_RATE * CHUNK_S);
  const started = performance.now();
  let sent = 0;
  const timer = setInterval(() => { // real time: send what the clock has reached
    const due = Math.min(mono.length, Math.round(((performance.now() - started) / 1000) * FILE_RATE));
    while (sent + step <= due || (due === mono.length && sent < due)) {
      const end = Math.min(sent + step, mono.length);
      send(mono.slice(sent, end).buffer);
      sent = end;
    }
    if (sent >= mono.length) {
      clearInterval(timer);
      ended();
    }
  }, 20);
  return {
    sampleRate: FILE_RATE,
    describe: `${file.name} (${decoded.duration.toFixed(1)} s) at real time`,
    close() {
      clearInterval(timer);
      player.pause();
      URL.revokeObjectURL(player.src);
    },
  };
}

// ---- the stream -----------------------------------------------------------------------------------------------
class Session {
  constructor(info) {
    this.info = info;
    this.ws = null;
    this.audio = null;
    this.ready = false;
    this.done = false;
    this.queued = [];
    this.queuedBytes = 0;
    this.droppedChunks = 0;
    this.endSeen = new Map(); // utterance_id -> performance.now() at its speech_end
  }

  send(buffer) { // an ArrayBuffer of float32 samples
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.started) {
      this.ws.send(buffer);
      return;
    }
    this.queued.push(buffer);
    this.queuedBytes += buffer.byteLength;
    const limit = MAX_QUEUED_S * this.audio_rate * 4;
    while (this.queuedBytes > limit && this.queued.length > 1) {
      this.queuedBytes -= this.queued.shift().byteLength;
      this.droppedChunks += 1;
    }
  }

  async open(mode) {
    const send = (buffer) => this.send(buffer);
    this.audio_rate = mode === "file" ? FILE_RATE : 48000;
    this.audio = mode === "file" ? await openFile(send, () => this.stop()) : await openMicrophone(send);
    this.audio_rate = this.audio.sampleRate;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const token = ui.token.value.trim();
    const query = token ? `?access_token=${encodeURIComponent(token)}` : "";
    this.ws = new WebSocket(`${scheme}//${location.host}/${query}`);
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => this.onOpen();
    this.ws.onmessage = (message) => this.onMessage(message);
    this.ws.onclose = (close) => this.onClose(close);
    setStatus(`Connecting… (${this.audio.describe})`);
  }

  onOpen() {
    const start = { type: "start", protocol: PROTOCOL, sample_rate: this.audio.sampleRate, format: "f32le",
      channels: 1, stream_id: "browser", realtime: true };
    if (ui.provisional.checked && this.info.provisional) start.provisional = true;
    this.ws.send(JSON.stringify(start));
    this.started = true;
    for (const buffer of this.queued) this.ws.send(buffer);
    this.queued = [];
    this.queuedBytes = 0;
  }

  onMessage(message) {
    if (typeof message.data !== "string") return;
    let m;
    try {
      m = JSON.parse(message.data);
    } catch (e) {
      fail("The server sent a message that is not JSON: is this a crab-rt server?");
      return;
    }
    switch (m.type) {
      case "ready":
        if (m.protocol !== PROTOCOL) {
          fail(`Wrong protocol: asked for ${PROTOCOL}, the server answered ${m.protocol}.`);
          return;
        }
        this.ready = true;
        setSpeaking(false);
        setStatus(`Listening to ${this.audio.describe}` +
          (m.provisional ? "; provisional events on" : "") + (this.droppedChunks ?
          `; ${this.droppedChunks} chunk(s) dropped while connecting` : ""));
        break;
      case "speech_start":
        setSpeaking(true);
        ui.speaking.dataset.starts = String(Number(ui.speaking.dataset.starts) + 1);
        break;
      case "speech_end":
        setSpeaking(false);
        if (m.utterance_id !== null) this.endSeen.set(m.utterance_id, performance.now());
        break;
      case "event":
        showEvent(m, this.endSeen.get(m.utterance_id));
        break;
      case "error":
        if (m.fatal) {
          const refusals = { bad_start: "The server refused the stream", protocol: "Protocol error",
            unsupported_language: "Wrong language", server_full: "The server is full", bad_audio: "Bad audio",
            idle_timeout: "No audio for too long", internal: "The server failed on this stream" };
          showAlert(`${refusals[m.code] || m.code} (${m.code}): ${m.message}`);
        } else {
          setStatus(`${m.message}`);
        }
        break;
      case "done":
        this.done = true;
        setStatus(`Stream ended (${m.reason}): ${m.audio_s.toFixed(1)} s of audio, ${m.utterances} ` +
          `utterance(s), ${m.events} event(s)` + (m.dropped_utterances ? `, ${m.dropped_utterances} dropped` : ""));
        break;
      default:
        break; // a newer server's message: ignored, as the protocol asks
    }
  }

  async onClose(close) {
    this.closeAudio();
    setSpeaking(null);
    finished();
    if (this.done || close.code === 1000 && this.stopping) return;
    if (!this.started || close.code === 1006) { // the handshake failed, or the connection broke: ask why
      try {
        await admit();
        showAlert(`The connection to ${location.host} closed unexpectedly (code ${close.code}).`);
      } catch (e) {
        showAlert(e.message);
      }
      return;
    }
    const reasons = { 1001: "the server is shutting down", 1007: "the audio was not valid",
      1008: "the server refused the protocol", 1009: "a message was too large", 1011: "the server failed",
      1013: "the server is full; try again later" };
    if (ui.alert.hidden) {
      showAlert(`The stream ended: ${reasons[close.code] || "code " + close.code}` +
        (close.reason ? ` (${close.reason})` : "") + ".");
    }
  }

  stop() { // end of audio: the server closes the utterance in flight, sends its events, then done
    this.stopping = true;
    this.closeAudio();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "stop" }));
      setStatus("Stopping: waiting for the last events…");
    } else if (this.ws) {
      this.ws.close();
    }
  }

  closeAudio() {
    if (this.audio) {
      this.audio.close();
      this.audio = null;
    }
  }
}

// ---- the page -------------------------------------------------------------------------------------------------
function setStatus(text) { ui.status.textContent = text; }

function showAlert(text) {
  ui.alert.textContent = text;
  ui.alert.hidden = false;
}

function fail(text) {
  showAlert(text);
  if (session) {
    const s = session;
    s.closeAudio();
    if (s.ws) s.ws.close(1000);
  }
}

function setSpeaking(speaking) {
  ui.speaking.dataset.speaking = String(speaking === true);
  ui.speakingText.textContent = speaking === null ? "Not streaming" : speaking ? "Speaking" : "Silence";
}

function finished() {
  session = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
}

const labelColors = new Map();
function colorOf(label) {
  if (!labelColors.has(label)) {
    labelColors.set(label, COLORS[label.toLowerCase()] || PALETTE[labelColors.size % PALETTE.length]);
  }
  return labelColors.get(label);
}

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function showEvent(event, endSeenAt) {
  const id = String(event.utterance_id);
  let row = ui.timeline.querySelector(`li[data-utterance-id="${id}"]`);
  if (row && row.dataset.stage === "final") return; // a late provisional event never replaces a final one
  const fresh = !row;
  if (fresh) row = element("li", "utterance");
  row.replaceChildren();
  row.dataset.utteranceId = id;
  row.dataset.stage = event.stage || "final";
  row.dataset.label = event.label;
  const color = colorOf(event.label);
  row.style.setProperty("--label-color", color);
  row.style.setProperty("--label-bg", `${color}33`);

  row.append(element("div", "when", `#${event.utterance_id} · ${event.start_s.toFixed(1)}–${event.end_s.toFixed(1)} s`));
  const verdict = element("div", "verdict");
  verdict.append(element("span", "label", event.label),
    element("span", "confidence", `${Math.round(event.confidence * 100)} %`),
    element("span", "stage", event.stage === "provisional" ? "provisional · voice only" : "final"));
  if (event.abstained) verdict.append(element("span", "abstained", "below the confidence threshold"));
  row.append(verdict);

  const probs = element("div", "probs");
  probs.setAttribute("aria-label", "class probabilities");
  for (const [label, p] of Object.entries(event.probabilities).sort((a, b) => b[1] - a[1])) {
    const item = element("span", "prob");
    item.dataset.label = label;
    item.dataset.probability = String(p);
    const bar = element("span", "bar");
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    bar.setAttribute("aria-valuenow", String(p));
    bar.setAttribute("aria-label", label);
    const fill = element("span", "fill");
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    fill.style.background = colorOf(label);
    bar.append(fill);
    item.append(element("span", "name", label), bar, element("span", "value", p.toFixed(2)));
    probs.append(item);
  }
  row.append(probs);
  row.append(element("p", "text", event.text || ""));

  const server = event.latency_ms && event.latency_ms.end_to_event;
  const here = endSeenAt !== undefined ? performance.now() - endSeenAt : undefined;
  const latency = [];
  if (server !== undefined) latency.push(`${Math.round(server)} ms in the server`);
  if (here !== undefined) latency.push(`${Math.round(here)} ms on this page`);
  const latencyLine = element("div", "latency", `end of speech → event: ${latency.join(", ")}`);
  if (server !== undefined) latencyLine.dataset.endToEventMs = String(server);
  row.append(latencyLine);
  if (fresh) {
    ui.timeline.append(row);
    row.scrollIntoView({ block: "nearest" });
  }
}

async function start(event) {
  event.preventDefault();
  if (session) return;
  ui.alert.hidden = true;
  ui.start.disabled = true;
  const mode = document.querySelector('input[name="mode"]:checked').value;
  try {
    setStatus("Checking the server…");
    const info = await admit();
    describeServer(info);
    session = new Session(info);
    ui.stop.disabled = false;
    await session.open(mode);
  } catch (e) {
    if (session) session.closeAudio();
    finished();
    showAlert(e.message);
    setStatus("Not streaming.");
    if (e.focus) e.focus.focus();
  }
}

function updateMode() {
  ui.fileRow.hidden = !$("mode-file").checked;
}

ui.form.addEventListener("submit", start);
ui.stop.addEventListener("click", () => { if (session) session.stop(); });
ui.clear.addEventListener("click", () => ui.timeline.replaceChildren());
for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", updateMode);
updateMode();
setSpeaking(null);
fetch("/healthz", { cache: "no-store" })
  .then((r) => r.json())
  .then((h) => { ui.serverInfo.textContent = `crab-rt ${h.version} · ${h.status}`; })
  .catch(() => { ui.serverInfo.textContent = "The server's /healthz did not answer."; });
