"""Error hierarchy: one subclass per stage, each message says what is wrong and what to do.

The CLI prints ``str(error)`` as one line and exits non-zero; a traceback only with --debug.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class StampError(Exception):
    """Base class of every error the user can cause (bad model, bad flag, bad config)."""

    exit_code = 1


class ConfigError(StampError):
    """An option or config file holds a value that is not allowed."""

    exit_code = 2


class ModelLoadError(StampError):
    """The input is missing, not an ONNX model, or cannot be converted to the needed opset."""


class ExportError(StampError):
    """A PyTorch model could not be found, loaded or exported to ONNX."""


class RewriteError(StampError):
    """A graph pass could not rewrite the model (or found nothing to rewrite)."""


class ValidationError(StampError):
    """Numerical validation could not be run or did not meet its tolerance."""


class MissingExtraError(StampError):
    """A command needs optional dependencies (a pip extra) that are not installed."""
