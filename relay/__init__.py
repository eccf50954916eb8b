"""relay: PostgreSQL row changes to signed webhooks."""

from typing import TYPE_CHECKING, Any

from relay._version import __version__

if TYPE_CHECKING:
    from relay.capture.tag import NoTransaction, atag, tag

__all__ = ["NoTransaction", "__version__", "atag", "tag"]


def __getattr__(name: str) -> Any:
    """``relay.tag`` and the rest of the tagging API, imported when first asked for: every
    ``relay`` command imports this package, and ``relay --version`` need not wait for psycopg."""
    if name in ("NoTransaction", "atag", "tag"):
        from relay.capture import tag as module

        return getattr(module, name)
    raise AttributeError(f"module 'relay' has no attribute {name!r}")
