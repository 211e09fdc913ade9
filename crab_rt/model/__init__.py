"""The Crab model (torch): encoders, head, and the whole bimodal classifier.

Importing `crab_rt.model` imports torch; the runtime's ONNX and TensorRT paths
never do.
"""
