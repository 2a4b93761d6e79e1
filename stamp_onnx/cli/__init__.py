"""The command line (``stamp-onnx``): argument parsing, the commands, ``demo``.

Layer 7, the top (docs/design.md, "Layers"): may import every layer; nothing imports it. The
commands that need PyTorch import their modules inside the command, so ``quantize``,
``inspect`` and ``compare`` run on the lean install. ``main`` is the console script's entry
point (``stamp_onnx.cli:main``, the same as before the CLI became a package, so installed
scripts keep working).
"""

from stamp_onnx.cli.commands import main

__all__ = ["main"]
