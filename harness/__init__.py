"""The harness that tests, ``make soak`` and ``make bench`` share: real servers (gunicorn,
redis-server, nginx, Procfile processes) started on free loopback ports and stopped by PID, fake
engines, and the load and fault scenarios. Nothing in ``app/`` imports it."""
