"""Route keys of the emulated Daytona API: "METHOD /template", exactly as calls are recorded.

Tests name routes with these constants (`emulator.count(CREATE)`, `emulator.fail_next(LIST, 503)`).
"""

from __future__ import annotations

CREATE = "POST /api/sandbox"
LIST = "GET /api/sandbox"
GET = "GET /api/sandbox/{sandboxId}"
DELETE = "DELETE /api/sandbox/{sandboxId}"
START = "POST /api/sandbox/{sandboxId}/start"
STOP = "POST /api/sandbox/{sandboxId}/stop"
LABELS = "PUT /api/sandbox/{sandboxId}/labels"
AUTOSTOP = "POST /api/sandbox/{sandboxId}/autostop/{interval}"
AUTOARCHIVE = "POST /api/sandbox/{sandboxId}/autoarchive/{interval}"
AUTODELETE = "POST /api/sandbox/{sandboxId}/autodelete/{interval}"
LAST_ACTIVITY = "POST /api/sandbox/{sandboxId}/last-activity"
PREVIEW_URL = "GET /api/sandbox/{sandboxId}/ports/{port}/preview-url"
SIGNED_PREVIEW_URL = "GET /api/sandbox/{sandboxId}/ports/{port}/signed-preview-url"
EXPIRE_SIGNED_PREVIEW_URL = (
    "POST /api/sandbox/{sandboxId}/ports/{port}/signed-preview-url/{token}/expire"
)
TOOLBOX_PROXY_URL = "GET /api/sandbox/{sandboxId}/toolbox-proxy-url"
SOCKET_IO = "GET /api/socket.io/"
UPLOAD = "POST /toolbox/{sandboxId}/files/bulk-upload"
EXECUTE = "POST /toolbox/{sandboxId}/process/execute"
SESSION_CREATE = "POST /toolbox/{sandboxId}/process/session"
SESSION_LIST = "GET /toolbox/{sandboxId}/process/session"
SESSION_GET = "GET /toolbox/{sandboxId}/process/session/{sessionId}"
SESSION_DELETE = "DELETE /toolbox/{sandboxId}/process/session/{sessionId}"
SESSION_EXEC = "POST /toolbox/{sandboxId}/process/session/{sessionId}/exec"
SESSION_COMMAND = "GET /toolbox/{sandboxId}/process/session/{sessionId}/command/{commandId}"
SESSION_LOGS = "GET /toolbox/{sandboxId}/process/session/{sessionId}/command/{commandId}/logs"
GIT_CLONE = "POST /toolbox/{sandboxId}/git/clone"
PREVIEW = "* /preview/{sandboxId}/{port}{tail}"
SIGNED_PREVIEW = "* /signed/{token}{tail}"
PREVIEW_HOST = "* {port}-{id}.preview.localhost"
UNMATCHED = "* (unmatched)"

# Calls that need the API key (everything but preview traffic and socket.io attempts).
API_ROUTES = frozenset(
    {
        CREATE,
        LIST,
        GET,
        DELETE,
        START,
        STOP,
        LABELS,
        AUTOSTOP,
        AUTOARCHIVE,
        AUTODELETE,
        LAST_ACTIVITY,
        PREVIEW_URL,
        SIGNED_PREVIEW_URL,
        EXPIRE_SIGNED_PREVIEW_URL,
        TOOLBOX_PROXY_URL,
        UPLOAD,
        EXECUTE,
        SESSION_CREATE,
        SESSION_LIST,
        SESSION_GET,
        SESSION_DELETE,
        SESSION_EXEC,
        SESSION_COMMAND,
        SESSION_LOGS,
        GIT_CLONE,
    }
)
ROUTES = API_ROUTES | {SOCKET_IO, PREVIEW, SIGNED_PREVIEW, PREVIEW_HOST}


def check_route(route: str | None) -> None:
    """Refuse a route name that is not one of the constants above (a typo would match nothing)."""
    if route is not None and route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; use the route constants of this module")
