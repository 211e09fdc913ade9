"""`crab-rt model-info`: parameter counts of the head and encoders."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "model-info", parents=[common],
        help="print parameter counts (head at the paper's sizes, encoders)",
        description="Build the model with random weights (nothing is downloaded) and count parameters.",
    )
    p.add_argument("--speech-encoder", default="random:wavlm-large", help="random:<preset>, folder or hub id")
    p.add_argument("--text-encoder", default="random:roberta-large", help="random:<preset>, folder or hub id")
    p.add_argument("--classes", type=int, default=4, help="number of emotion classes (default 4)")
    p.add_argument("--hidden-dim", type=int, default=512, help="head width h (default 512, the paper's)")
    p.add_argument("--modality", choices=("both", "speech", "text"), default="both")
    p.add_argument("--checkpoint", help="count the parameters of a checkpoint instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crab_rt.errors import requires_extra

    with requires_extra("train"):
        import torch  # noqa: F401

        from crab_rt.model.config import HeadConfig, ModelConfig
        from crab_rt.model.crab import CrabModel, count_parameters
        from crab_rt.train.legs import ContrastiveLegs

    if args.checkpoint:
        from crab_rt.model.checkpoint import load_model

        model, _, _ = load_model(args.checkpoint)
        source = args.checkpoint
    else:
        head = HeadConfig(hidden_dim=args.hidden_dim, modality=args.modality)
        config = ModelConfig(speech_encoder=args.speech_encoder, text_encoder=args.text_encoder, head=head)
        model = CrabModel.build(config, [f"class{i}" for i in range(args.classes)])
        source = f"{args.speech_encoder} + {args.text_encoder}"
    counts = model.parameter_counts()
    legs = ContrastiveLegs(model.head.config.tap_dims(), model.head.config.taps, 512, 512)
    h = model.head.config
    print(f"model: {source}")
    print(f"head: h={h.hidden_dim}, {h.num_attention_heads} attention head(s), "
          f"{h.num_classes} classes, modality {h.modality}")
    width = 34
    rows = [
        ("speech encoder", counts["speech_encoder"]),
        ("text encoder", counts["text_encoder"]),
        ("Crab head (inference)", counts["head"]),
        ("total at inference", sum(counts.values())),
        ("contrastive legs (training only)", count_parameters(legs)),
    ]
    for name, n in rows:
        print(f"  {name:<{width}} {n:>14,d}  ({n / 1e6:.2f} M)")
    return 0
