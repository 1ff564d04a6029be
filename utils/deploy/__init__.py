"""Inference: the Detector (letterbox, model, decode, NMS), prediction sources and loop, export
to SavedModel/TFLite/ONNX, and drawing."""
