"""Shell command lines the service itself runs inside sandboxes, whatever the provider."""

from __future__ import annotations

import shlex

# Serves the working directory on $PORT, on the loopback only (the provider's proxy or preview
# gateway is the way in). Needs nothing but the python3 every sandbox image has.
STATIC_SERVER = 'python3 -m http.server "$PORT" --bind 127.0.0.1'


def static_server(directory: str | None = None) -> str:
    """The static file server for `directory` (relative to the working directory), or for the
    working directory itself."""
    if directory is None:
        return STATIC_SERVER
    return f"{STATIC_SERVER} --directory {shlex.quote(directory)}"
