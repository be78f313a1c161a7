"""GitHub routes: the webhook, review links and preview repositories. Parse, authorize, call the
GitHub service, shape the answer."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from midori_preview.auth import Principal, current_user
from midori_preview.errors import PayloadTooLarge, Unauthorized
from midori_preview.github.errors import WebhookRejected
from midori_preview.github.schemas import RepoCreated, RepoCreateIn, WebhookReceipt
from midori_preview.github.service import GitHubService
from midori_preview.github.signature import signature_ok

router = APIRouter(tags=["github"])
DELIVERY = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
EVENT = re.compile(r"^[a-z_]{1,64}$")


def service(request: Request) -> GitHubService:
    svc: GitHubService = request.app.state.github
    return svc


Svc = Annotated[GitHubService, Depends(service)]
User = Annotated[Principal, Depends(current_user)]


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Webhook body is larger than {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"Webhook body is larger than {limit} bytes.")
    return bytes(body)


@router.post(
    "/api/integrations/github",
    status_code=202,
    response_model=WebhookReceipt,
    responses={
        401: {"description": "Missing or wrong `X-Hub-Signature-256` (`unauthorized`)."},
        404: {"description": "The webhook is off (GITHUB_WEBHOOK_SECRET unset)."},
        413: {"description": "Body over GITHUB_WEBHOOK_MAX_BYTES (`payload_too_large`)."},
    },
)
async def github_webhook(
    request: Request,
    svc: Svc,
    x_github_event: Annotated[str | None, Header()] = None,
    x_github_delivery: Annotated[str | None, Header()] = None,
    x_hub_signature_256: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """GitHub webhook (`pull_request`, `push`). The HMAC of the raw body is checked before
    anything else is read from it; each delivery id acts once; the work runs in the background."""
    secret = svc.webhook_secret
    if secret is None:
        raise StarletteHTTPException(404, "Not Found")
    body = await _read_capped(request, svc.settings.github_webhook_max_bytes)
    if not signature_ok(secret, body, x_hub_signature_256):
        raise Unauthorized("Missing or invalid X-Hub-Signature-256.")
    if not x_github_delivery or not DELIVERY.fullmatch(x_github_delivery):
        raise WebhookRejected("Missing or invalid X-GitHub-Delivery.")
    if not x_github_event or not EVENT.fullmatch(x_github_event):
        raise WebhookRejected("Missing or invalid X-GitHub-Event.")
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("The body is not JSON.") from None
    if not isinstance(payload, dict):
        raise WebhookRejected("The body is not a JSON object.")
    receipt = await svc.receive(x_github_delivery, x_github_event, payload)
    out = WebhookReceipt(outcome=receipt.outcome, reason=receipt.reason)
    return JSONResponse(out.model_dump(mode="json", by_alias=True), status_code=202)


@router.get(
    "/r/{link}",
    status_code=302,
    responses={
        302: {"description": "To a fresh, short-lived preview URL."},
        404: {"description": "Unknown link (`review_link_not_found`)."},
        409: {"description": "The build failed (`preview_failed`)."},
        410: {"description": "PR closed (`preview_closed`) or preview stopped."},
        503: {"description": "Still building (`preview_building`); see Retry-After."},
    },
)
async def review_link(svc: Svc, link: Annotated[str, Path(max_length=1024)]) -> RedirectResponse:
    """The stable preview link of a pull request: each visit hands out a fresh, short-lived
    preview URL, for as long as the pull request is open."""
    url = await svc.review_url(link)
    return RedirectResponse(
        url,
        status_code=302,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


@router.post(
    "/api/github/repos",
    status_code=201,
    response_model=RepoCreated,
    responses={
        401: {"description": "Not authenticated (`unauthorized`)."},
        404: {"description": "Unknown sandbox/project, or organization (`github_not_found`)."},
        409: {"description": "Sandbox not running, or the repository exists."},
        502: {"description": "GitHub or git failed (`repo_push_failed`, `github_*`)."},
        503: {"description": "GitHub is not configured (`github_not_configured`)."},
    },
)
async def create_preview_repo(body: RepoCreateIn, user: User, svc: Svc) -> RepoCreated:
    """Create a GitHub repository (yours or `org`'s) holding the project's files and a README
    on branch `preview`. The files come from `sandboxId` (a running preview of yours),
    `projectId` alone (your newest running preview of it), or `projectId` + `promptJson` /
    `files`, rendered exactly like a preview."""
    return await svc.exporter.export(user.user_id, body)
