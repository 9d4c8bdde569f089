"""The ``--server`` flag of every client command: what a user types, made a URL.

``127.0.0.1:8080`` becomes ``http://127.0.0.1:8080`` (a bare host:port means
plain HTTP, as `fedge serve` listens without TLS by default), and a trailing
``/v1`` or ``/`` is dropped (the commands add ``/v1/…`` themselves), so the
address a user copies from a log line, a browser or the API docs works.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

SERVER_HELP = ("the service's URL, e.g. http://10.0.0.2:8080 (a bare host:port means http://; "
               "a trailing /v1 is ignored)")


def normalise_server_url(text: str) -> str:
    """``text`` as a base URL (``scheme://host[:port][/prefix]``); ValueError if it cannot be."""
    value = text.strip()
    if not value:
        raise ValueError("expected a URL like http://10.0.0.2:8080, got an empty string")
    if "://" not in value:
        value = "http://" + value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parses the port: ValueError if it is not a number
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: expected an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{text!r}: no host name")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a server URL has no ?query or #fragment")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")].rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


def server_arg(text: str) -> str:
    """``argparse`` type for ``--server``: a bad value is a usage error (exit 2)."""
    try:
        return normalise_server_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
