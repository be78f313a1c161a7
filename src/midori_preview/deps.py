"""What routes get, as `Annotated` FastAPI dependencies: the services of the app's container
(`bootstrap.Services`) and the caller. The one module that reads the container off the app.

Every dependency here is `async def`, also those that only read an attribute: FastAPI runs a
plain `def` dependency in its thread pool, a thread hand-off per dependency per request (it was
a fifth of a heartbeat's CPU time, and its latency under load)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from midori_preview.auth import Principal
from midori_preview.bootstrap import Services
from midori_preview.errors import Forbidden
from midori_preview.github.service import GitHubService
from midori_preview.observability.context import bind_sandbox_id
from midori_preview.previews.admin import AdminService
from midori_preview.previews.service import PreviewService
from midori_preview.settings import Settings


async def get_services(request: Request) -> Services:
    """The container the app's lifespan built."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_previews(services: ServicesDep) -> PreviewService:
    return services.previews


async def get_admin(services: ServicesDep) -> AdminService:
    return services.admin


async def get_github(services: ServicesDep) -> GitHubService:
    return services.github


async def current_user(request: Request, services: ServicesDep) -> Principal:
    """The authenticated caller (401 otherwise). The path's sandbox id goes on the request's
    logs here (every route with one authenticates; the query's and the body's are bound by
    `RequestContextMiddleware`), not in an app-wide dependency that every request would pay."""
    bind_sandbox_id(request.path_params.get("sandbox_id"))
    principal = await services.authenticator.authenticate(request)
    request.state.principal = principal
    return principal


async def current_admin(user: Annotated[Principal, Depends(current_user)]) -> Principal:
    """The authenticated caller, who must be an admin (403 otherwise)."""
    if not user.is_admin:
        raise Forbidden("Admins only.")
    return user


SettingsDep = Annotated[Settings, Depends(get_settings)]
PreviewsDep = Annotated[PreviewService, Depends(get_previews)]
AdminDep = Annotated[AdminService, Depends(get_admin)]
GitHubDep = Annotated[GitHubService, Depends(get_github)]
User = Annotated[Principal, Depends(current_user)]
AdminUser = Annotated[Principal, Depends(current_admin)]
