"""The model zoo: hand-written nets exported to ONNX with seeded weights, and their build cache.

Importing this package pulls in nothing heavy; only `nets`, `export` and `build` need torch.
"""
