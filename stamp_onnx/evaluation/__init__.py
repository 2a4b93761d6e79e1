"""Measuring a rewrite: the PyTorch STaMP reference, validation (end to end and per layer),
metrics, ``eval`` and its report; ``compare`` and ``inspect``, which need no PyTorch.

Layer 6 (docs/design.md, "Layers"): may import every layer below, the zoo and the targets.
``compare``, ``inspection`` and ``metrics`` import no PyTorch (the lean install runs them); the
others need the ``models`` extra.
"""
