"""A fleet host as Conveyor knows it: plain data, validated, travelling between tasks as a dict. No Airflow."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from conveyor import validation
from conveyor.exceptions import InvalidInputError

MAX_LABEL = 256  # an EC2 tag value is at most 256 characters


@dataclass(frozen=True)
class Host:
    """One host. ``name`` is its identity (unique in an environment: ledger rows, wave plans and logs
    use it; an EC2 host's instance id); ``label`` is an optional human name shown next to it (an EC2
    host's ``Name`` tag, which need not be unique and may contain spaces). Never passed to a shell."""

    name: str
    environment: str
    address: str
    ssh_port: int = 22
    app_root: str = "app"
    restart: str = "bin/restart"
    health_url: str = ""
    metrics_url: str = ""
    label: str = ""

    @property
    def display(self) -> str:
        """``i-0abc123 (web server)`` for logs and status; just the name when there is no label."""
        return f"{self.name} ({self.label})" if self.label and self.label != self.name else self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Host:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def validated(self) -> Host:
        validation.host_name(self.name)
        validation.host_address(self.address)
        validation.app_root(self.app_root)
        if not isinstance(self.label, str) or len(self.label) > MAX_LABEL or not self.label.isprintable():
            raise InvalidInputError(f"invalid host label {self.label!r} of {self.name}: printable text of at most "
                                    f"{MAX_LABEL} characters")
        return self
