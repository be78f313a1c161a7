"""Stateful fuzzing of the HTTP API: schemathesis walks the OpenAPI links (previews/links.py) —
create → status (both ways) → heartbeat → source update → stop → events, each answer's
`sandboxId` feeding the next call — with valid and invalid inputs, as a user and as an admin, on
the app in process (ASGI, lifespan running; embedded SQLite and in-process store; local
sandboxes). Every step: no 5xx, a documented status and content type, a body matching its schema,
and our error envelope on every 4xx (the checks of test_api_fuzz).

Each scenario starts with a create (one of the documented examples, or a generated body), then
takes up to STEPS steps: linked calls on the sandboxes it made, and any other operation of
`/api/preview` (usage, the admin table, cleanup actions, the usage report) in between. A scenario
stops what it created at the end; nothing may be left when the app shuts down.

Bounded and reproducible: derandomized Hypothesis, no example database. MP_FUZZ_SCENARIOS
(default 10) and MP_FUZZ_STEPS (default 10) scale it up."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, initialize, rule
from schemathesis import GenerationMode
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.python import asgi

from midori_preview.app import create_app
from tests.conftest import Backend, make_settings
from tests.test_api_fuzz import CHECKS, live_rows, stopping_everything_at_shutdown

SCENARIOS = int(os.environ.get("MP_FUZZ_SCENARIOS", "10"))
STEPS = int(os.environ.get("MP_FUZZ_STEPS", "10"))
API = "/api/preview/daytona"
CREATE = f"POST {API}"

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "database": "none"},
        # A live preview's event stream never ends by itself: read its first event, then hang up.
        "max-stream-events": 1,
        "request-timeout": 60,
    }
)


@pytest.fixture
def preview_schema(tmp_path: Path) -> Iterator[schemathesis.BaseSchema]:
    settings = make_settings(
        tmp_path,
        Backend("embedded", None, None),
        git_allowed_url_prefixes=[f"file://{tmp_path}/repos/"],  # no network
        max_concurrent_sandboxes_per_user=3,
        create_rate_per_minute=100_000,
    )
    app = stopping_everything_at_shutdown(create_app(settings))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    try:
        yield schema.include(path_regex=r"^/api/preview/")
    finally:
        asgi.shutdown_lifespans()  # runs stop_everything, then the app's own shutdown
    assert asyncio.run(live_rows(settings.effective_database_url)) == []
    sandboxes = settings.data_dir / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []


def workflow(
    schema: schemathesis.BaseSchema,
    headers: dict[str, str],
    seen: Counter[str],
    failures: list[str],
) -> Any:
    """The state machine schemathesis builds from the links, plus a create to start each
    scenario (schemathesis does not pick it as an entry point: it guesses that `projectId` must
    come from some other answer) and a rule calling any operation the links do not reach."""
    base: Any = schema.as_state_machine()
    create = schema[API]["POST"]
    examples = [
        create.Case(body=body)
        for body in schema.raw_schema["components"]["schemas"]["CreatePreview"]["examples"]
    ]
    creates = st.sampled_from(examples) | create.as_strategy(GenerationMode.POSITIVE)
    linked = {label for label in base._transitions.operations}
    others = [op.ok() for op in schema.get_all_operations() if op.ok().label not in linked]
    unlinked = st.one_of(*(op.as_strategy(mode) for op in others for mode in GenerationMode))
    catch_all = Bundle("catch_all")

    class Workflow(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            self.created: list[str] = []
            seen["scenarios"] += 1

        def step(self, input: StepInput) -> StepOutput:
            output: StepOutput = super().step(input)
            if input.transition is not None and output.response.status_code < 300:
                seen[f"linked {input.case.operation.label}"] += 1
            return output

        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {"headers": headers}

        def after_call(self, response: schemathesis.Response, case: schemathesis.Case[Any]) -> None:
            super().after_call(response, case)
            seen[f"{case.operation.label} {response.status_code}"] += 1
            if case.operation.label == CREATE and response.status_code in (200, 202):
                self.created.append(response.json()["sandboxId"])

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case[Any],
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            try:
                case.validate_response(
                    response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
                )
            except Exception as failure:
                failures.append(f"{failure}\n{case.as_curl_command(headers)}")
                raise

        def root_step(self, input: StepInput) -> StepOutput:
            """A step that starts a chain, recorded as schemathesis' own roots are."""
            self.recorder.record_case(case=input.case)
            self.control.record_step(input, self.recorder)
            return self.step(input)

        @initialize(target=catch_all, input=creates.map(StepInput.initial))
        def start_a_preview(self, input: StepInput) -> StepOutput:
            return self.root_step(input)

        @rule(target=catch_all, input=unlinked.map(StepInput.initial))
        def anything_else(self, input: StepInput) -> StepOutput:
            return self.root_step(input)

        def teardown(self) -> None:
            stop = schema[f"{API}/stop"]["POST"]
            for sandbox_id in self.created:
                res = stop.Case(body={"sandboxId": sandbox_id}).call(headers=headers)
                assert res.status_code == 200, res.text

    return Workflow


@pytest.mark.parametrize("role", ["user", "admin"])
def test_api_stateful(preview_schema: schemathesis.BaseSchema, role: str) -> None:
    headers = {"X-User-Id": f"stateful-{role}"}
    if role == "admin":
        headers["X-User-Role"] = "admin"
    seen: Counter[str] = Counter()
    failures: list[str] = []
    machine = workflow(preview_schema, headers, seen, failures)
    for attempt in range(5):
        settings = hypothesis.settings(
            max_examples=SCENARIOS - seen["scenarios"],
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=attempt == 0,  # reproducible, unless a replay went another way
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        try:
            machine.run(settings=settings)
            break
        except hypothesis.errors.Flaky:
            # The app's answers depend on timing (a build still running or not), so a replay
            # may take other branches; schemathesis' own runner does the same: a failure counts
            # (each was recorded as it happened), an unrepeatable replay does not. Go on with
            # fresh scenarios until SCENARIOS have run.
            seen["flaky replays"] += 1
            if failures or seen["scenarios"] >= SCENARIOS:
                break
    calls = sum(n for key, n in seen.items() if key[0] in "GP")
    print(f"\nstateful {role}: {calls} calls: {dict(sorted(seen.items()))}")
    assert failures == [], "\n\n".join(failures)
    # The links were walked: a preview made by one step was used by the next ones.
    assert seen[f"{CREATE} 202"] > 0, seen
    assert sum(n for key, n in seen.items() if key.startswith("linked ")) >= 3, seen
