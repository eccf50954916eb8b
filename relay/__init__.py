"""relay: PostgreSQL row changes to signed webhooks."""

from relay._version import __version__
from relay.capture.tag import NoTransaction, atag, tag

__all__ = ["NoTransaction", "__version__", "atag", "tag"]
