"""Where the head's time goes on a GPU: its masked bi-GRU, as the model runs it (two forward GRUs, one after the
other) against one fused bidirectional cuDNN call, eager and replayed from a CUDA graph.

`python -m crab_bench.gru_probe --out DIR` writes DIR/gru_probe.json; one line per point on the console.
The fused call equals the masked bi-GRU at batch 1 (no padding); it is a measurement, not the model's code.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from crab_bench.stats import time_calls
    from crab_rt.model.head import MaskedBiGRU

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--frames", default="50,200,600")
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    h = args.hidden
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        masked = MaskedBiGRU(h, h).to(dev, dtype).eval()
        fused = torch.nn.GRU(h, h, batch_first=True, bidirectional=True).to(dev, dtype).eval()
        for frames in (int(f) for f in args.frames.split(",")):
            x = torch.randn(1, frames, h, device=dev, dtype=dtype)
            mask = torch.ones(1, frames, dtype=torch.bool, device=dev)
            calls = {"masked_two_grus": lambda m=masked, x=x, k=mask: m(x, k),
                     "fused_bidirectional": lambda f=fused, x=x: f(x)}
            with torch.inference_mode():
                for name, fn in calls.items():
                    row = {"dtype": str(dtype).split(".")[-1], "frames": frames, "call": name}
                    eager = time_calls(lambda fn=fn: (fn(), sync()), 3, args.repeat)
                    row["eager_p50_ms"] = round(statistics.median(eager), 4)
                    if dev.type == "cuda":
                        try:
                            graph = torch.cuda.CUDAGraph()
                            stream = torch.cuda.Stream(dev)
                            stream.wait_stream(torch.cuda.current_stream(dev))
                            with torch.cuda.stream(stream):
                                fn()
                            torch.cuda.current_stream(dev).wait_stream(stream)
                            with torch.cuda.graph(graph):
                                fn()
                            replays = time_calls(lambda g=graph: (g.replay(), sync()), 0, args.repeat)
                            row["graph_p50_ms"] = round(statistics.median(replays), 4)
                        except Exception as e:  # noqa: BLE001 - cuDNN RNNs may refuse capture: say so
                            row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
                    print(json.dumps(row), flush=True)
                    results.append(row)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gru_probe.json").write_text(json.dumps({"hidden": h, "points": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
