"""The OpenAPI document (/docs) shows an example for every request body, every successful answer
and every documented error; errors are our `{"error": {"code", "message"}}` envelope with real
codes. Examples are validated against their models so that they cannot rot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from midori_preview import errors as errors_module
from midori_preview.app import create_app
from midori_preview.errors import PreviewError
from midori_preview.github import client as github_client
from midori_preview.github import schemas as github_schemas
from midori_preview.github.payloads import Build, Policy, decide
from midori_preview.previews import admin_routes
from midori_preview.previews import schemas as preview_schemas
from midori_preview.previews.links import operation_ref
from midori_preview.previews.states import SandboxStatus
from tests.conftest import Backend, make_settings

HTTP_METHODS = {"get", "put", "post", "patch", "delete"}
MODEL_MODULES: tuple[ModuleType, ...] = (
    preview_schemas,
    github_schemas,
    admin_routes,
    errors_module,
)
# The readiness probe answers 503 with its own body (which dependency is down), not an error.
NOT_ENVELOPES = {("/readyz", "get", "503")}
# Answered by the app's handlers rather than by a PreviewError subclass.
HANDLER_CODES = {"not_found": {404}, "method_not_allowed": {405}, "internal_error": {500}}
# Codes given per instance (GitHubCallFailed(code, message, status)).
INSTANCE_CODES = {"repo_create_rejected", "github_bad_answer"}

Operation = tuple[str, str, dict[str, Any]]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    app = create_app(make_settings(tmp, Backend("embedded", None, None)))
    return app.openapi()


def operations(spec: dict[str, Any]) -> Iterator[Operation]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def models() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for module in MODEL_MODULES:
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel:
                found[value.__name__] = value
    return found


def component_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return None
    name = ref.rsplit("/", 1)[1]
    return name.removesuffix("-Input").removesuffix("-Output")


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def examples_of(spec: dict[str, Any], media: dict[str, Any]) -> list[Any]:
    """The media type's `example` / named `examples`, else its (referenced) schema's."""
    found: list[Any] = []
    if "example" in media:
        found.append(media["example"])
    found += [named["value"] for named in media.get("examples", {}).values()]
    if not found:
        schema = resolve(spec, media.get("schema", {}))
        found += list(schema.get("examples", []))
        if "example" in schema:
            found.append(schema["example"])
    return found


def known_codes() -> dict[str, set[int] | None]:
    """Every error code the service can answer with → its statuses (None: set per instance)."""
    codes: dict[str, set[int] | None] = {k: set(v) for k, v in HANDLER_CODES.items()}
    codes.update(dict.fromkeys(INSTANCE_CODES))

    def walk(cls: type[Any]) -> Iterator[type[Any]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    for cls in walk(PreviewError):
        if cls.code == PreviewError.code:
            continue  # GitHubCallFailed: the code is given per instance
        statuses = codes.setdefault(cls.code, set())
        if statuses is not None:
            statuses.add(cls.status)
    for cls in walk(github_client.GitHubError):
        codes[cls.code] = None  # surfaced as GitHubCallFailed(code, message, status)
    return codes


def test_every_request_body_has_an_example(spec: dict[str, Any]) -> None:
    missing = [
        f"{method.upper()} {path} ({media_type})"
        for path, method, op in operations(spec)
        for media_type, media in op.get("requestBody", {}).get("content", {}).items()
        if not examples_of(spec, media)
    ]
    assert missing == []


def test_request_examples_validate_against_their_models(spec: dict[str, Any]) -> None:
    known = models()
    checked = 0
    for path, method, op in operations(spec):
        for media in op.get("requestBody", {}).get("content", {}).values():
            name = component_name(media.get("schema", {}))
            if name is None:
                continue  # a free-form body (the GitHub webhook's): nothing to validate against
            assert name in known, f"{method.upper()} {path}: no model for {name}"
            for example in examples_of(spec, media):
                known[name].model_validate(example)
                checked += 1
    assert checked >= 5


def test_every_success_answer_has_an_example(spec: dict[str, Any]) -> None:
    missing = []
    for path, method, op in operations(spec):
        statuses = [s for s in op["responses"] if s[0] in "23"]
        assert statuses, f"{method.upper()} {path} documents no successful answer"
        for status in statuses:
            content = op["responses"][status].get("content", {})
            if status[0] == "2" and not content:
                missing.append(f"{method.upper()} {path} {status}: no content")
            missing += [
                f"{method.upper()} {path} {status} ({media_type})"
                for media_type, media in content.items()
                if not examples_of(spec, media)
            ]
    assert missing == []


def test_every_error_answer_has_an_envelope_example(spec: dict[str, Any]) -> None:
    codes = known_codes()
    problems = []
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            if status[0] not in "45":
                continue
            where = f"{method.upper()} {path} {status}"
            media = response.get("content", {}).get("application/json")
            examples = examples_of(spec, media) if media else []
            if not examples:
                problems.append(f"{where}: no JSON example")
                continue
            if (path, method, status) in NOT_ENVELOPES:
                continue
            for example in examples:
                error = example.get("error") if isinstance(example, dict) else None
                if not (
                    isinstance(error, dict)
                    and isinstance(error.get("code"), str)
                    and isinstance(error.get("message"), str)
                    and error["message"]
                ):
                    problems.append(f"{where}: not an error envelope: {example!r}")
                    continue
                if error["code"] not in codes:
                    problems.append(f"{where}: unknown code {error['code']}")
                    continue
                statuses = codes[error["code"]]
                if statuses and int(status) not in statuses:
                    problems.append(f"{where}: {error['code']} is answered with {statuses}")
    assert problems == []


def test_model_examples_validate_against_their_models(spec: dict[str, Any]) -> None:
    """As written in the models: FastAPI drops every `null` from the document (fastapi#5559),
    so a response example there may lack a required nullable field."""
    known = models()
    for raw_name, schema in spec["components"]["schemas"].items():
        name = raw_name.removesuffix("-Input").removesuffix("-Output")
        if schema.get("examples"):
            assert name in known, f"examples on {raw_name}, which is none of our models"
    checked = 0
    for model in known.values():
        for example in model.model_json_schema().get("examples", []):
            model.model_validate(example)
            checked += 1
    assert checked >= 15


def test_the_webhook_example_is_a_delivery_that_builds(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/api/integrations/github"]["post"]["requestBody"]
    [example] = examples_of(spec, body["content"]["application/json"])
    policy = Policy(allowlist=["octo-org/*"], build_forks=False, push_branches=[])
    assert isinstance(decide("pull_request", example, policy), Build)


def test_the_status_enum_is_the_state_machines(spec: dict[str, Any]) -> None:
    """Every answer's `status` lists exactly the states of `states.SandboxStatus`, in its order,
    inline (no schema component of its own)."""
    schemas = spec["components"]["schemas"]
    expected = {"enum": [s.value for s in SandboxStatus], "title": "Status", "type": "string"}
    for name in ("Created", "PreviewStatus", "HeartbeatOut"):
        assert schemas[name]["properties"]["status"] == expected, name
    assert "SandboxStatus" not in schemas


def sandbox_id_fields(spec: dict[str, Any], op: dict[str, Any]) -> set[str]:
    """The names under which an operation takes a sandbox id (parameter or body field)."""
    names = {p["name"] for p in op.get("parameters", [])}
    for media in op.get("requestBody", {}).get("content", {}).values():
        names |= set(resolve(spec, media["schema"]).get("properties", {}))
    return names & {"sandboxId", "sandbox_id"}


def test_every_operation_on_a_sandbox_is_linked_from_create(spec: dict[str, Any]) -> None:
    """The OpenAPI links (what schemathesis' stateful test walks) reach every operation that
    takes a sandbox id, from both answers of create and from each answer naming one preview."""
    on_a_sandbox = {
        operation_ref(path, method)
        for path, method, op in operations(spec)
        if sandbox_id_fields(spec, op)
    }
    assert len(on_a_sandbox) >= 7
    create = spec["paths"]["/api/preview/daytona"]["post"]["responses"]
    for status in ("200", "202"):
        targets = {link["operationRef"] for link in create[status]["links"].values()}
        assert targets == on_a_sandbox, status
    for path, method, op in operations(spec):
        for status, answer in op["responses"].items():
            for name, link in answer.get("links", {}).items():
                ref = link["operationRef"]
                assert ref in on_a_sandbox, (path, method, status, name)
                expression = next(iter({**link.get("parameters", {}),
                                        **link.get("requestBody", {})}.values()))  # fmt: skip
                assert expression.startswith("$response.body#/"), (path, name, expression)
