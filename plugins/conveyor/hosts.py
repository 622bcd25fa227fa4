"""A fleet host as Conveyor knows it: plain data, validated, travelling between tasks as a dict. No Airflow."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from conveyor import validation


@dataclass(frozen=True)
class Host:
    name: str
    environment: str
    address: str
    ssh_port: int = 22
    app_root: str = "app"
    restart: str = "bin/restart"
    health_url: str = ""
    metrics_url: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Host:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def validated(self) -> Host:
        validation.host_name(self.name)
        validation.host_address(self.address)
        validation.remote_path(self.app_root)
        return self
