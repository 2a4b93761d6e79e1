"""The built-in models and their data (text windows, photos, speech) and the PyTorch -> ONNX export.

Layer 5 (docs/design.md, "Layers"): may import every layer below (foundation, core, graph,
graph); needs the ``models`` extra (PyTorch), so nothing of the rewrite path imports
its modules. This file itself imports nothing: the CLI reads the defaults below on the lean install.
"""

DEFAULT_MODEL = "smollm2-135m"  # export, eval, demo
# Evaluation windows (samples) of validate, eval and demo; export's calibration data is held out
# from an evaluation of this many windows, so a caller who keeps both defaults never calibrates
# on what it evaluates.
DEFAULT_WINDOWS = 4
CALIBRATION_SAMPLES = 8  # export --calibration-data, and eval's own calibration
