"""``run-registry``, the command line: its commands (``main``) and its HTTP client (``client``)."""
