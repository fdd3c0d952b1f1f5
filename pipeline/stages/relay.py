"""alert-relay: Alertmanager's rollback and retrain alerts become dispatches of the rollback and retrain workflows."""

from __future__ import annotations

from pipeline.ci.progress import say
from pipeline.core.errors import InfrastructureError
from pipeline.core.interrupts import Interrupted
from pipeline.runtime.alert_relay import Relay, RelaySettings, make_server


def alert_relay_stage(host: str, port: int) -> None:
    """Serve POST /alert until SIGINT or SIGTERM (a clean stop, exit 0)."""
    settings = RelaySettings.from_env()
    try:
        server = make_server(host, port, Relay(settings))
    except OSError as exc:
        raise InfrastructureError(f"alert-relay cannot listen on {host}:{port}: {exc.strerror}") from None
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    auth = (
        "Bearer token required"
        if settings.relay_token
        else "⚠ NO TOKEN (ALERT_RELAY_INSECURE_NO_TOKEN): ANYONE WHO REACHES THIS PORT ROLLS PRODUCTION BACK"
    )
    say(
        f"▶ alert-relay: http://{bound_host}:{bound_port}/alert -> repository_dispatch `rollback`, `retrain` on "
        f"{settings.repository} ({settings.api_url}); {auth}"
    )
    try:
        server.serve_forever(poll_interval=0.5)
    except Interrupted as exc:
        say(f"✓ alert-relay stopped ({str(exc).split(':')[0]})")
    finally:
        server.server_close()
