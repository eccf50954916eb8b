"""relay: PostgreSQL row changes to signed webhooks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from relay.capture.tag import NoTransaction, atag, tag

__all__ = ["NoTransaction", "__version__", "atag", "tag"]
