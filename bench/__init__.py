"""The benchmark: the service against a bare-Flask floor on the same gunicorn settings (make bench)."""
