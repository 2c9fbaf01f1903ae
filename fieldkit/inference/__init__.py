"""On-device AI (layer 3): signed ONNX model bundles, the CPU runner, findings and their SR."""
