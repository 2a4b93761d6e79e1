"""The built-in models and their data (text windows, photos, speech) and the PyTorch -> ONNX export.

Layer 5 (docs/design.md, "Layers"): may import every layer below (foundation, core, graph,
passes, pipeline); needs the ``models`` extra (PyTorch), so nothing of the rewrite path imports it.
"""
