"""The ``relay run`` process around the worker: signals, logs, the metrics endpoint, systemd."""
