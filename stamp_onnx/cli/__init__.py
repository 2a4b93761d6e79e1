"""The command line (``stamp-onnx``): argument parsing, the commands, ``demo``.

Layer 7, the top (docs/design.md, "Layers"): may import every layer; nothing imports it. The
commands that need PyTorch import their modules inside the command, so ``quantize``,
``inspect`` and ``compare`` run on the lean install.
"""
