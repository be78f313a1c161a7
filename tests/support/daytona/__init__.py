"""A local emulator of the Daytona API and sandbox toolbox, served to the real `daytona` SDK.

It speaks the wire protocol described in /work/shared/DAYTONA.md. By API surface:

| module | what |
|---|---|
| `app.py` | `DaytonaEmulator`: server (own thread + loop), API key, call recording, routing |
| `faults.py` | latency, errors, resets, creates that hang / fail / answer late, throttling, |
| | busy deletes (409), quotas, lagging listings |
| `sandboxes.py` | sandbox CRUD, states, labels, intervals, list by labels (paged) |
| `preview.py` | preview links (plain and signed) and the proxy that serves them |
| `toolbox.py` | bulk upload, `process/execute`, git clone; bubblewrap or plain processes |
| `sessions.py` | toolbox sessions, their commands and the log-follow WebSocket |
| `state.py` | the shared model (sandboxes, commands, recordings) and Daytona's error shape |
| `routes.py` | route keys (`CREATE`, `LIST`, …) that tests count calls and inject faults with |

Sandboxes are directories; commands really run. Faults are configured with methods on the
emulator object, from any thread; every request is recorded.
"""

from tests.support.daytona.app import DaytonaEmulator
from tests.support.daytona.routes import (
    AUTOARCHIVE,
    AUTODELETE,
    AUTOSTOP,
    CREATE,
    DELETE,
    EXECUTE,
    EXPIRE_SIGNED_PREVIEW_URL,
    GET,
    GIT_CLONE,
    LABELS,
    LAST_ACTIVITY,
    LIST,
    PREVIEW,
    PREVIEW_HOST,
    PREVIEW_URL,
    ROUTES,
    SESSION_COMMAND,
    SESSION_CREATE,
    SESSION_DELETE,
    SESSION_EXEC,
    SESSION_GET,
    SESSION_LIST,
    SESSION_LOGS,
    SIGNED_PREVIEW,
    SIGNED_PREVIEW_URL,
    SOCKET_IO,
    START,
    STOP,
    TOOLBOX_PROXY_URL,
    UNMATCHED,
    UPLOAD,
)
from tests.support.daytona.state import HOME, GitCloneRecord, RecordedCall, SandboxView

__all__ = [
    "AUTOARCHIVE",
    "AUTODELETE",
    "AUTOSTOP",
    "CREATE",
    "DELETE",
    "EXECUTE",
    "EXPIRE_SIGNED_PREVIEW_URL",
    "GET",
    "GIT_CLONE",
    "HOME",
    "LABELS",
    "LAST_ACTIVITY",
    "LIST",
    "PREVIEW",
    "PREVIEW_HOST",
    "PREVIEW_URL",
    "ROUTES",
    "SESSION_COMMAND",
    "SESSION_CREATE",
    "SESSION_DELETE",
    "SESSION_EXEC",
    "SESSION_GET",
    "SESSION_LIST",
    "SESSION_LOGS",
    "SIGNED_PREVIEW",
    "SIGNED_PREVIEW_URL",
    "SOCKET_IO",
    "START",
    "STOP",
    "TOOLBOX_PROXY_URL",
    "UNMATCHED",
    "UPLOAD",
    "DaytonaEmulator",
    "GitCloneRecord",
    "RecordedCall",
    "SandboxView",
]
