"""Trained models in: ONNX graphs, torch modules and state_dicts -> a .lip spec and tensors."""
