"""GitHub routes: the webhook, review links and preview repositories. Parse, authorize, call the
GitHub service, shape the answer."""

from __future__ import annotations

import hmac
import json
import re
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from midori_preview.deps import GitHubDep, User
from midori_preview.errors import (
    PayloadTooLarge,
    Unauthorized,
    error_body,
    error_choices,
    error_response,
    invalid_request,
)
from midori_preview.github.actions import ActionsTrigger
from midori_preview.github.errors import WebhookRejected
from midori_preview.github.schemas import RepoCreated, RepoCreateIn, WebhookReceipt
from midori_preview.github.signature import signature_ok
from midori_preview.observability.metrics import record_delivery
from midori_preview.previews.schemas import EXAMPLE_SANDBOX_ID

router = APIRouter(tags=["github"])
DELIVERY = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
EVENT = re.compile(r"^[a-z_]{1,64}$")
UNAUTHORIZED = error_response(
    401, "unauthorized", "Missing bearer token.", "Not authenticated (`unauthorized`)."
)
# A `pull_request` delivery, trimmed to the fields this service reads.
WEBHOOK_EXAMPLE = {
    "action": "opened",
    "number": 7,
    "pull_request": {
        "number": 7,
        "state": "open",
        "updated_at": "2025-06-12T09:30:00Z",
        "head": {
            "ref": "update-hero",
            "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "repo": {"full_name": "octo-org/site", "fork": False},
        },
    },
    "repository": {"full_name": "octo-org/site"},
    "installation": {"id": 41234567},
}


def _payload(body: bytes, content_type: str) -> dict[str, Any]:
    """The delivery's JSON: the body itself (`application/json`), or its `payload` field
    (`application/x-www-form-urlencoded`, GitHub's default content type for a hook)."""
    raw: bytes | str = body
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=4)
        except (ValueError, UnicodeDecodeError):
            raise WebhookRejected("The form body is not valid.") from None
        values = fields.get("payload", [])
        if len(values) != 1:
            raise WebhookRejected("The form body has no single `payload` field.")
        raw = values[0]
    try:
        payload: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("The body is not JSON.") from None
    if not isinstance(payload, dict):
        raise WebhookRejected("The body is not a JSON object.")
    return payload


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
        **error_response(
            400,
            "invalid_webhook",
            "Missing or invalid X-GitHub-Delivery.",
            "Signed, but not a delivery we can read: headers or JSON (`invalid_webhook`).",
        ),
        **error_response(
            401,
            "unauthorized",
            "Missing or invalid X-Hub-Signature-256.",
            "Missing or wrong `X-Hub-Signature-256` (`unauthorized`).",
        ),
        **error_response(
            404,
            "not_found",
            "Not Found",
            "The webhook is off (GITHUB_WEBHOOK_SECRET unset).",
        ),
        **error_response(
            413,
            "payload_too_large",
            "Webhook body is larger than 5242880 bytes.",
            "Body over GITHUB_WEBHOOK_MAX_BYTES (`payload_too_large`).",
        ),
        **invalid_request(
            "Invalid headers (`validation_error`).",
            (("header", "x-github-event"), "Input should be a valid string"),
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "GitHub's delivery, exactly as sent (its HMAC is checked): JSON, or "
            "the form GitHub sends by default (`payload=<JSON>`).",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "additionalProperties": True},
                    "example": WEBHOOK_EXAMPLE,
                },
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {"payload": {"type": "string"}},
                        "required": ["payload"],
                    },
                    "example": {"payload": json.dumps(WEBHOOK_EXAMPLE)},
                },
            },
        }
    },
)
async def github_webhook(
    request: Request,
    svc: GitHubDep,
    x_github_event: Annotated[str | None, Header()] = None,
    x_github_delivery: Annotated[str | None, Header()] = None,
    x_hub_signature_256: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """GitHub webhook (`pull_request`, `push`), JSON or form-encoded. The HMAC of the raw body is
    checked before anything else is read from it; each delivery id acts once (a redelivery of
    one whose work failed runs again); the work runs in the background.

    Also the GitHub Actions trigger: `Authorization: Bearer <GITHUB_ACTIONS_TOKEN>` and
    `{"repo": "owner/name", "prNumber": 7}` (no signature headers); the pull request is read from
    the API and handled exactly like its webhook event, closing included."""
    token = svc.actions_token
    if token is not None and authorization and not x_hub_signature_256 and not x_github_event:
        return await _actions_trigger(request, svc, token, authorization)
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
    payload = _payload(body, request.headers.get("content-type", ""))
    receipt = await svc.receive(x_github_delivery, x_github_event, payload)
    record_delivery(x_github_event, receipt.outcome)
    out = WebhookReceipt(outcome=receipt.outcome, reason=receipt.reason)
    return JSONResponse(out.model_dump(mode="json", by_alias=True), status_code=202)


async def _actions_trigger(
    request: Request, svc: GitHubDep, token: bytes, authorization: str
) -> JSONResponse:
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
        raise Unauthorized("Missing or invalid bearer token.")
    body = await _read_capped(request, svc.settings.github_webhook_max_bytes)
    try:  # curl -d sends JSON as a form: the body is read as JSON whatever its content type
        trigger = ActionsTrigger.model_validate_json(body)
    except ValidationError:
        raise WebhookRejected('The body is not {"repo": "owner/name", "prNumber": n}.') from None
    receipt = await svc.trigger(trigger.repo, trigger.pr_number)
    out = WebhookReceipt(outcome=receipt.outcome, reason=receipt.reason)
    return JSONResponse(out.model_dump(mode="json", by_alias=True), status_code=202)


@router.get(
    "/r/{link}",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {"description": "To a fresh, short-lived preview URL."},
        **error_response(
            404,
            "review_link_not_found",
            "No such preview link.",
            "Unknown link (`review_link_not_found`).",
        ),
        **error_response(
            409,
            "preview_failed",
            "The preview of 6dcb09b failed to build.",
            "The build failed (`preview_failed`).",
        ),
        **error_choices(
            410,
            "PR closed (`preview_closed`) or preview stopped (`preview_stopped`).",
            error_body("preview_closed", "The pull request was closed; this preview is gone."),
            error_body("preview_stopped", "This preview was stopped; push a commit to rebuild it."),
        ),
        **invalid_request(
            "A link too long to be ours (`validation_error`).",
            (("path", "link"), "String should have at most 1024 characters"),
        ),
        **error_response(
            503,
            "preview_building",
            "The preview is still being built; try again in a moment.",
            "Still building (`preview_building`); see Retry-After.",
        ),
    },
)
async def review_link(
    svc: GitHubDep, link: Annotated[str, Path(max_length=1024)]
) -> RedirectResponse:
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
        **UNAUTHORIZED,
        **error_choices(
            404,
            "Unknown sandbox/project (`sandbox_not_found`), or organization (`github_not_found`).",
            error_body("sandbox_not_found", "No such sandbox.", sandboxId=EXAMPLE_SANDBOX_ID),
            error_body(
                "github_not_found", "No such organization, or the service has no access to it."
            ),
        ),
        **error_choices(
            409,
            "Sandbox not running (`sandbox_not_running`), or the repository exists "
            "(`repo_create_rejected`).",
            error_body("sandbox_not_running", "The preview must be running to copy its files."),
            error_body(
                "repo_create_rejected",
                "GitHub refused to create the repository (does one with this name exist already?).",
            ),
        ),
        **error_response(
            413,
            "payload_too_large",
            "The preview's files are larger than MAX_REQUEST_BYTES.",
            "The project's files are too large (`payload_too_large`).",
        ),
        **invalid_request(
            "Invalid payload (`validation_error`).",
            (("body",), "Value error, give exactly one of sandboxId or projectId"),
        ),
        **error_response(
            429,
            "rate_limited",
            "Too many repositories created; try again in 42 s.",
            "Too many repositories created (`rate_limited`); see Retry-After.",
            retryAfterSeconds=42,
        ),
        **error_choices(
            502,
            "GitHub or git failed (`repo_push_failed`, `github_*`).",
            error_body(
                "repo_push_failed",
                "The repository was created but the push failed (git push failed).",
                repoUrl="https://github.com/octocat/cafe-site",
            ),
            error_body("github_auth_failed", "GitHub refused the service's credentials."),
        ),
        **error_choices(
            503,
            "GitHub is not configured (`github_not_configured`) or unavailable "
            "(`github_unavailable`, `github_rate_limited`).",
            error_body(
                "github_not_configured",
                "GitHub is not configured (GITHUB_TOKEN or a GitHub App).",
            ),
            error_body("github_unavailable", "GitHub is unavailable; retry later."),
            error_body("github_rate_limited", "GitHub's rate limit is hit; retry later."),
        ),
    },
)
async def create_preview_repo(body: RepoCreateIn, user: User, svc: GitHubDep) -> RepoCreated:
    """Create a GitHub repository (yours or `org`'s) holding the project's files and a README
    on branch `preview`. The files come from `sandboxId` (a running preview of yours),
    `projectId` alone (your newest running preview of it), or `projectId` + `promptJson` /
    `files`, rendered exactly like a preview."""
    return await svc.exporter.export(user.user_id, body)
