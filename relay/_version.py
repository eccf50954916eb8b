"""The installed distribution's version, for User-Agent, application_name and ``--version``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
