"""Typed errors. Every message names the problem and the fix, on one line.

The CLI turns a `SpacError` into ``error: <message>`` on stderr and a non-zero exit.
"""

from __future__ import annotations


class SpacError(Exception):
    """Base class of all errors a user can cause (bad input, bad files, bad options)."""

    exit_code = 2


class CheckpointError(SpacError):
    """The Hugging Face checkpoint directory is missing, incomplete or corrupt."""


class UnsupportedModelError(SpacError):
    """The checkpoint's architecture or one of its options is not supported."""


class BundleError(SpacError):
    """The bundle directory is missing, incomplete, or a file in it is corrupt."""


class ManifestError(BundleError):
    """The bundle manifest is unreadable, of another schema version, or inconsistent."""


class ChecksumError(BundleError):
    """A bundle file's sha256 or size differs from the manifest."""


class ParityError(SpacError):
    """An exported piece disagrees with the PyTorch reference beyond tolerance."""

    exit_code = 3


class PromptError(SpacError):
    """The prompt is empty, or too long for the model."""


class ConfigError(SpacError):
    """An option value is invalid (negative temperature, top-p outside (0, 1], ...)."""


class MissingDependencyError(SpacError):
    """An optional dependency (the ``export`` extra) is not installed."""


class BudgetError(SpacError):
    """A memory budget cannot hold what one layer needs, or is malformed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM asked the command to stop (not a user error: the CLI says "terminated" and
    exits 143, 128 + SIGTERM, after the same cleanup as Ctrl-C)."""
