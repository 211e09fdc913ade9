"""The whole chain at one point (waveform and token ids in, probabilities out), the ways torch can run it on a GPU.

The `models` parts time each graph alone, each call with its own host-device copies and synchronisation, and
their sum is the chain's latency run part after part. Here the chain is one call, four ways:

- `eager`: speech encoder, text encoder, head, one after the other (what the per-graph sums add up);
- `eager_two_streams`: the text encoder on a second CUDA stream beside the speech encoder (they are independent);
- `captured`: the whole chain captured by hand in one CUDA graph (`crab_rt.backends.torch_capture`), one stream;
- `captured_two_streams`: the same graph with the text encoder's branch on the second stream.

Each call copies the inputs from the host and the probabilities back, as the runtime does. Reported per way: the
p50/p95 of the call's wall time over `--repeat` calls after `--warmup`, and the largest probability difference
from `eager`. `python -m crab_bench.chain_probe --out DIR` writes DIR/chain_probe.json; on a machine without CUDA
only the eager way runs (the rehearsal), and the others are listed with the reason.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["main", "WAYS"]

WAYS = ("eager", "eager_two_streams", "captured", "captured_two_streams")


def _chain(model, side_stream):
    """The chain as one function of tensors; with `side_stream`, the text encoder runs on it."""
    import torch

    def chain(values, audio_mask, ids, text_mask):
        if side_stream is not None:
            side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side_stream):
                text = model.text_encoder(ids, text_mask)
        else:
            text = model.text_encoder(ids, text_mask)
        speech, frame_mask = model.speech_encoder(values, audio_mask)
        if side_stream is not None:
            torch.cuda.current_stream().wait_stream(side_stream)
        logits = model.head(speech.float(), frame_mask, text.float(), text_mask.bool())
        return torch.softmax(logits.float(), dim=-1)

    return chain


def main(argv: list[str] | None = None) -> int:
    import warnings

    import numpy as np
    import torch

    from crab_bench.bundles import PRESETS, build_bench_model
    from crab_bench.stats import summarize_ms, time_calls
    from crab_rt.audio import SAMPLE_RATE
    from crab_rt.backends.torch import TORCH_PRECISIONS, place_model
    from crab_rt.backends.torch_capture import CapturedPart
    from crab_rt.errors import CrabError

    p = argparse.ArgumentParser(prog="python -m crab_bench.chain_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results folder (made if absent)")
    p.add_argument("--preset", default="large", choices=sorted(PRESETS))
    p.add_argument("--device", default="cuda:0", help="cuda:N, or cpu for the rehearsal (eager only)")
    p.add_argument("--precision", default="bf16", choices=TORCH_PRECISIONS,
                   help="the encoders' type (the head stays fp32, as in the torch backend)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--audio-s", type=float, default=4.0)
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # transformers' WavLM attention mixes a bool padding mask with a float bias (harmless, noisy)
    warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"chain_probe: error: --device {args.device} but torch sees no CUDA device")
        return 2
    model = build_bench_model(args.preset, args.seed, args.device)
    dtype = place_model(model, args.device, args.precision)  # as the torch backend: encoders cast, head fp32
    rng = np.random.default_rng(args.seed)
    n = int(round(args.audio_s * SAMPLE_RATE))
    host = {"values": (0.1 * rng.standard_normal((args.batch, n))).astype(np.float32),
            "audio_mask": np.ones((args.batch, n), dtype=np.int64),
            "ids": rng.integers(4, 300, size=(args.batch, args.text_tokens)).astype(np.int64),
            "text_mask": np.ones((args.batch, args.text_tokens), dtype=np.int64)}
    host["ids"][:, 0], host["ids"][:, -1] = 0, 2

    side = torch.cuda.Stream(args.device) if cuda else None
    fns = {"eager": _chain(model, None)}
    skipped = {}
    if cuda:
        fns["eager_two_streams"] = _chain(model, side)
        fns["captured"] = CapturedPart(_chain(model, None), args.device, "chain")
        fns["captured_two_streams"] = CapturedPart(_chain(model, side), args.device, "chain (two streams)")
    else:
        skipped = {w: "needs a CUDA device" for w in WAYS[1:]}

    def call(fn):
        t = {k: torch.from_numpy(v).to(args.device) for k, v in host.items()}
        out = fn(t["values"].to(dtype), t["audio_mask"], t["ids"], t["text_mask"])
        return out.cpu().numpy()  # waits for the device, as the runtime's sessions do

    rows, reference = [], None
    with torch.inference_mode():
        for way, fn in fns.items():
            row, last = {"way": way}, {}
            try:
                samples = time_calls(lambda fn=fn, last=last: last.update(out=call(fn)), args.warmup, args.repeat)
            except (CrabError, RuntimeError) as e:
                row["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            else:
                reference = last["out"] if reference is None else reference
                ms = summarize_ms(samples, (50, 95))
                row.update(p50_ms=ms["p50"], p95_ms=ms["p95"], n=ms["n"],
                           max_abs_diff_vs_eager=float(np.max(np.abs(last["out"] - reference))))
            print(json.dumps(row), flush=True)
            rows.append(row)
    payload = {"kind": "chain_probe", "preset": args.preset, "device": args.device,
               "gpu": torch.cuda.get_device_name(args.device) if cuda else None, "precision": args.precision,
               "head_precision": "fp32", "batch": args.batch, "audio_s": args.audio_s,
               "text_tokens": args.text_tokens, "warmup": args.warmup, "repeat": args.repeat,
               "torch": torch.__version__, "ways": rows, "skipped": skipped}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "chain_probe.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
