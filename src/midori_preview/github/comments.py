"""The one PR comment, as markdown: found again by its hidden marker and rewritten in place at
every state. It carries the stable review link only — never a provider token."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from midori_preview.github.states import GitHubState

MARKER = "<!-- midori-preview:pr-preview -->"
TAIL_LINES = 15


@dataclass(frozen=True, slots=True)
class CommentState:
    state: GitHubState
    sha: str
    link: str | None = None
    step: str | None = None
    message: str | None = None
    exit_code: int | None = None
    logs: list[str] = field(default_factory=list)
    ttl_hours: float | None = None


def _fence(lines: list[str]) -> str:
    text = "\n".join(line[:300] for line in lines[-TAIL_LINES:])
    text = re.sub(r"`{3,}", "``", text)  # build output cannot close the code block
    return f"```text\n{text}\n```"


def _clean(text: str) -> str:
    return re.sub(r"[\r\n<>`]", " ", text)[:300]


def render(c: CommentState) -> str:
    short = c.sha[:7]
    lines = [MARKER, "### Midori preview", ""]
    if c.state == GitHubState.WAITING:
        label = _clean(c.message or "preview")
        lines.append(
            f"⏸️ `{short}` comes from a fork: its preview is built once a maintainer adds the "
            f"`{label}` label to this pull request."
        )
    elif c.state == GitHubState.BUILDING:
        lines.append(f"⏳ Building a preview of `{short}`…")
    elif c.state == GitHubState.READY:
        lines.append(f"✅ Preview of `{short}` is ready: **[Open the preview]({c.link})**")
        lines.append("")
        keep = f" (at most {c.ttl_hours:g} h)" if c.ttl_hours else ""
        lines.append(
            f"The link stays valid while this pull request is open{keep}; each visit opens a "
            "fresh, short-lived preview session. New commits rebuild it."
        )
    elif c.state == GitHubState.FAILED:
        where = f" at step `{_clean(c.step)}`" if c.step else ""
        code = f" (exit code {c.exit_code})" if c.exit_code is not None else ""
        lines.append(f"❌ The preview of `{short}` failed{where}{code}.")
        if c.message:
            lines += ["", f"> {_clean(c.message)}"]
        if c.logs:
            lines += ["", "<details><summary>Last log lines</summary>", "", _fence(c.logs), "",
                      "</details>"]  # fmt: skip
        lines += ["", "Push a new commit to try again."]
    elif c.state == GitHubState.STOPPED:
        why = f" ({_clean(c.message)})" if c.message else ""
        lines.append(
            f"⏹️ The preview of `{short}` was stopped{why}. Push a new commit to rebuild it."
        )
    else:  # closed
        lines.append(f"🔒 The pull request was closed; the preview of `{short}` is stopped.")
    return "\n".join(lines) + "\n"
