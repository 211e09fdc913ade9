// crab-rt: the AudioWorklet that taps the microphone. It mixes the input to mono and posts chunks of
// `chunkFrames` float32 samples (at the AudioContext's rate) to the page, which sends them as f32le PCM.
class CrabPcmTap extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunkFrames = options.processorOptions.chunkFrames;
    this.chunk = new Float32Array(this.chunkFrames);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no input yet (or the track ended)
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      this.chunk[this.filled++] = sum / channels.length;
      if (this.filled === this.chunkFrames) {
        this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);
        this.chunk = new Float32Array(this.chunkFrames);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("crab-pcm-tap", CrabPcmTap);
