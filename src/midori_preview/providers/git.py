"""Git on the service's host, run one way (a clone into a local sandbox, a push of a preview
repository): a scrubbed environment (no system or global config, no prompts, no credential
helper, only https/http/file transports), a time limit after which git's whole process group is
killed, and credentials only through `GIT_ASKPASS` and git's own environment — never in an argv,
a URL, a config file, an error message or a log line."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from midori_preview.providers.base import GitCredentials
from midori_preview.providers.processes import spawn

GIT_PATH = "/usr/bin:/bin"
USERNAME_ENV = "MIDORI_GIT_USERNAME"
PASSWORD_ENV = "MIDORI_GIT_PASSWORD"  # noqa: S105 - the name of the variable, not a secret
# Prints what git asks for from the environment: the script itself holds no secret.
ASKPASS = f"""#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "${USERNAME_ENV}" ;;
  *) printf '%s\\n' "${PASSWORD_ENV}" ;;
esac
"""


class GitFailed(Exception):
    """A git command failed; `detail` is the last line git wrote, with credentials masked."""

    def __init__(self, step: str, detail: str, exit_code: int | None) -> None:
        super().__init__(f"git {step} failed: {detail}")
        self.step = step
        self.detail = detail
        self.exit_code = exit_code


class GitTimeout(GitFailed):
    """A git command ran past its time limit; it was killed with everything it started."""

    def __init__(self, step: str, timeout: float) -> None:
        super().__init__(step, f"timed out after {timeout:g}s", None)
        self.timeout = timeout


class Git:
    """Runs git commands for one job. Use as a context manager: with credentials it writes the
    askpass script into `home` on entry and removes it on exit."""

    def __init__(
        self,
        *,
        home: Path,
        timeout: float,
        credentials: GitCredentials | None = None,
        executable: str = "git",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.timeout = timeout
        self.executable = executable
        self._credentials = credentials
        self._askpass = home / ".midori-askpass"
        self._extra = dict(env or {})

    def __enter__(self) -> Git:
        if self._credentials is not None:
            self.home.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self._askpass.unlink()  # a leftover of a crash: made anew, never reused
            fd = os.open(self._askpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
            with os.fdopen(fd, "w") as out:
                out.write(ASKPASS)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._askpass.unlink()

    def environment(self) -> dict[str, str]:
        """git's whole environment: nothing of the service's own."""
        env = {
            **self._extra,
            "PATH": GIT_PATH,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ALLOW_PROTOCOL": "https:http:file",
        }
        if self._credentials is not None:
            env |= {
                "GIT_ASKPASS": str(self._askpass),
                USERNAME_ENV: self._credentials.username,
                PASSWORD_ENV: self._credentials.password,
            }
        return env

    async def run(self, *args: str, cwd: Path) -> str:
        """`git <args>` in `cwd`; its standard output. Raises GitFailed / GitTimeout."""
        step = next((a for a in args if not a.startswith("-") and "=" not in a), "git")
        # No credential helper may store what askpass hands over.
        argv = [self.executable, "-c", "credential.helper=", *args]
        child = await spawn(argv, cwd=cwd, env=self.environment())
        try:
            async with asyncio.timeout(self.timeout):
                out, err, code = await asyncio.gather(
                    child.stdout.read(), child.stderr.read(), child.process.wait()
                )
        except TimeoutError:
            await child.kill()
            raise GitTimeout(step, self.timeout) from None
        except BaseException:  # cancelled: nothing of git outlives its caller either
            await child.kill()
            raise
        finally:
            child.close()
        if code != 0:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            raise GitFailed(step, self._mask(lines[-1] if lines else "failed"), code)
        return out.decode("utf-8", "replace")

    def _mask(self, text: str) -> str:
        if self._credentials is not None and self._credentials.password:
            text = text.replace(self._credentials.password, "[redacted]")
        return text[:300]
