"""Conveyor's exceptions: one class per way a release can stop, so callers and tickets can tell them apart."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base class of every error Conveyor raises on purpose."""


class InvalidInputError(ConveyorError, ValueError):
    """A parameter, ref, version or host name failed validation; nothing was changed."""


class ServiceConfigError(ConveyorError):
    """A service definition file is malformed; the message names the file and the field."""


class BuildError(ConveyorError):
    """Checking out or building the requested ref failed."""


class ArtifactError(ConveyorError):
    """An artifact is missing or does not match its checksum."""


class DeployError(ConveyorError):
    """Staging or activating a version on a host failed."""


class HealthCheckError(ConveyorError):
    """A host did not become healthy on the expected version in time."""


class TestSuiteError(ConveyorError):
    """The service's test suites failed against the replica."""

    __test__ = False  # not a pytest test class

    def __init__(self, message: str, failures: list[str] | None = None):
        super().__init__(message)
        self.failures = failures or []


class AnalysisFailed(ConveyorError):
    """Canary analysis found a regression against the baseline."""


class AnalysisInconclusive(ConveyorError):
    """Canary analysis could not decide and nobody chose to continue."""


class RollbackError(ConveyorError):
    """At least one host could not be returned to its previous version."""


class ReleaseFailed(ConveyorError):
    """Raised by the final watcher so a run that rolled back still ends failed."""
