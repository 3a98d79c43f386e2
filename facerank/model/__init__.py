"""The network and its runtimes: what a trained model is (config, torch-free), the pretrained
base it starts from (base), ResNet50 and its head (network), the model on torch (torch_model),
its ONNX export (export) and ONNX Runtime model (onnx_model), which of the two answers
(runtime), and fp32 / int8 (precision). Nothing here imports torch until it is used.
"""
