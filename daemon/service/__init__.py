"""Running fleetd as a service: the systemd notify protocol, config reload (deploy/fleetd.service)."""
