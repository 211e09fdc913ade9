"""crab_rt.data: corpora for training and evaluation, and fixtures for demos and tests.

- `manifest`: the manifest format (CSV / JSONL rows: id, audio, text, label, split, speaker).
- `corpora/`: importers for IEMOCAP, MELD and MSP-Podcast 2.0.
- `synth`: the synthetic bimodal corpus and conversation (plan, words, splits, files), spoken by
  `synth_espeak` (espeak-ng through `espeak`, the `[demo]` extra) or `synth_voice` (home-made).
- `tiny_asr`: random-weight Whisper models built offline (tests, demo, benchmarks).

Depends on the runtime (`crab_rt`) only; training imports it, the runtime never does.
"""
