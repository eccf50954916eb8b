"""TLS for a webhook: its ``ca_file_path`` loaded, checked and kept while the file stays the same.

A context is kept per file and per version of it on disk (device, inode, size, modification
time), so a CA file replaced on disk (renamed over, or rewritten) is read again on the next
request, not at the next restart. What is wrong with a CA file is said in words that name the
field, for ``relay run``'s reasons and for ``relay rules check`` alike.
"""

from __future__ import annotations

import os
import re
import ssl
from functools import lru_cache

from relay.model import Webhook


class CAFileProblem(Exception):
    """The webhook's ca_file_path cannot be used; the message names the field and the file."""


def context(webhook: Webhook, scheme: str) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl`` takes for a request to ``webhook`` over ``scheme``: no
    verification when it is off, the CA file's context when one is set and the request is
    https (an http request has no use for it), else the default verification. Raises
    :class:`CAFileProblem`."""
    if not webhook.ssl_verification:
        return False
    if webhook.ca_file_path and scheme == "https":
        return ca_context(webhook.ca_file_path)
    return True


def ca_context(path: str) -> ssl.SSLContext:
    """A context trusting the certificates in ``path`` alone, loaded again whenever the file
    changed on disk. Raises :class:`CAFileProblem`."""
    try:
        found = os.stat(path)
    except OSError as exc:
        raise CAFileProblem(_problem(path, exc)) from None
    return _load(path, found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def ca_problem(webhook: Webhook) -> str | None:
    """Why the webhook's ca_file_path cannot be used, or None (none set, or it loads)."""
    if not webhook.ca_file_path:
        return None
    try:
        ca_context(webhook.ca_file_path)
    except CAFileProblem as exc:
        return str(exc)
    return None


@lru_cache(maxsize=64)
def _load(path: str, device: int, inode: int, size: int, modified_ns: int) -> ssl.SSLContext:
    """The context of one version of the file (the arguments after ``path`` are its key)."""
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise CAFileProblem(_problem(path, exc)) from None


def _problem(path: str, exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            why = "holds no certificate (PEM, -----BEGIN CERTIFICATE-----)"
        else:
            detail = exc.reason or re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.args[-1]))
            why = f"is not a PEM certificate file OpenSSL can read ({detail})"
    elif isinstance(exc, OSError) and exc.errno:
        why = f"cannot be read: {os.strerror(exc.errno)}"
    else:
        why = f"cannot be read: {exc}"
    return f"ca_file_path {path!r} {why}"
