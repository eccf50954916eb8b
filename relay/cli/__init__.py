"""The ``relay`` command line: one module per group of commands."""
