"""Export stage: ONNX, parity, TensorRT engines, bundles (crab_rt.export)."""
