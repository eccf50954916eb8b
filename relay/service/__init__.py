"""The long-running process: settings, structured logs, metrics and systemd."""
