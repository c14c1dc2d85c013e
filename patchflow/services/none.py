"""``service_manager = none``: an install whose services patchflow must not touch."""

from __future__ import annotations

from collections.abc import Sequence

from patchflow.errors import ServiceError
from patchflow.services import NoImages, ServiceState


class NoServices(NoImages):
    """Manages nothing: stop and start do nothing, there are no application services to check."""

    kind = "none"

    def app_services(self) -> list[str]:
        return []

    def stop(self, services: Sequence[str] | None = None) -> None:
        return None

    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None:
        return None

    def check_running(self) -> None:
        return None

    def remove(self, services: Sequence[str]) -> None:
        return None

    def serves(self, port: int) -> bool | None:
        return None

    def proof_of_new(self, url: str, since: float) -> str | None:
        return None

    def proof_available(self, urls: Sequence[str]) -> str:
        return ""

    def restart(self, services: Sequence[str] | None = None) -> None:
        return None

    def up(self) -> None:
        return None

    def down(self) -> None:
        return None

    def status(self) -> list[ServiceState]:
        return []

    def logs(self, services: Sequence[str], *, follow: bool, tail: int | None) -> None:
        """Raises ServiceError: there are no service logs without a service manager."""
        raise ServiceError(
            "No service manager is configured (service_manager = none).",
            "Set PATCHFLOW_SERVICE_MANAGER to command or compose.",
        )

    def logs_hint(self) -> str:
        return "no service logs (service_manager = none)"
