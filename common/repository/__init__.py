"""The model repository: Triton's folder layout read unchanged (`DIR/<model>/<version>/model.onnx`,
optional `config.pbtxt`, gpulet's optional `gpulet.toml`), turned into served model specs and the
files agents fetch by content hash. Parsing is pure; only `layout` reads the folder.
"""
