"""What an answer from Daytona's preview proxy means: the app itself, or the proxy speaking.

Daytona's proxy (apps/proxy/pkg/proxy) answers for the app in four cases, none of which means the
app is ready: a missing or stale preview token gets a **307** to its login page (on another host;
the token resets when a sandbox restarts), a failed runner lookup a **400** with its own JSON
error body (`statusCode`, `message`, `code`, `timestamp`, `path`), nothing listening on the port
a **502**, and 503/504 from the load balancers in front. Anything else came from the app.
"""

from __future__ import annotations

import enum
import json
from urllib.parse import urljoin, urlsplit

import httpx

# Sent with every probe: the browser warning page is skipped, and a probe is not the sandbox's
# activity (Daytona's auto-stop must see only real traffic).
PROBE_HEADERS = {
    "X-Daytona-Skip-Preview-Warning": "true",
    "X-Daytona-Skip-Last-Activity-Update": "true",
}
_PROXY_ERROR_KEYS = frozenset({"statusCode", "message", "timestamp", "path"})


class Answer(enum.Enum):
    APP = "app"  # the app answered: ready
    NOT_YET = "not_yet"  # nothing listens yet, or the runner is not found
    STALE_TOKEN = "stale_token"  # noqa: S105 (a name) — the proxy wants a login: ask Daytona for the token again


def classify(response: httpx.Response, preview_url: str) -> Answer:
    """Who answered a probe of `preview_url`."""
    status = response.status_code
    if status in (502, 503, 504):
        return Answer.NOT_YET
    if status == 401:
        return Answer.STALE_TOKEN
    if status in (301, 302, 303, 307, 308) and _leaves(preview_url, response):
        return Answer.STALE_TOKEN
    if status == 400 and _is_proxy_error(response):
        return Answer.NOT_YET
    return Answer.APP


def _leaves(preview_url: str, response: httpx.Response) -> bool:
    """A redirect away from the preview's own host (the proxy's login page); an app's own
    redirects stay on its host."""
    location = response.headers.get("location")
    if not location:
        return False
    target = urlsplit(urljoin(preview_url, location))
    return target.netloc != urlsplit(preview_url).netloc or "/oidc/" in target.path


def _is_proxy_error(response: httpx.Response) -> bool:
    try:
        body = json.loads(response.content[:4096])
    except ValueError:
        return False
    return isinstance(body, dict) and body.keys() >= _PROXY_ERROR_KEYS
