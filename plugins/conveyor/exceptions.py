"""Conveyor's exceptions: one class per way a release can stop, so callers and tickets can tell them apart.

Every error Conveyor raises on purpose is a :class:`ConveyorError`; Airflow's own exceptions (skip,
fail, defer) are imported from ``airflow.sdk.exceptions`` where they are raised.
"""

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


class CommitsRed(ConveyorError):
    """A CI run found red commits (the ``report`` task raises it so the run ends failed)."""


class SignoffError(ConveyorError):
    """A sign-off call failed; ``str(e)`` is the message for the user, ``status`` the HTTP code (if any)."""

    def __init__(self, message: str, status: int | None = None, detail: object = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


class SoakIncident(ConveyorError):
    """An incident during a build's soak on the developer cluster: the build is never promoted."""


class PromotionRefused(ConveyorError):
    """A build may not be promoted to production (not soaked its minimum, an incident, older than production)."""
