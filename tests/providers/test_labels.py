"""The one label set every sandbox carries and the selector that finds a deployment's sandboxes:
the selector matches what `sandbox_labels` marks, for that deployment only."""

from __future__ import annotations

from midori_preview.providers.daytona.labels import label_value
from midori_preview.providers.labels import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_PROJECT_ID,
    LABEL_SANDBOX_ID,
    LABEL_USER_ID,
    owned_selector,
    sandbox_labels,
)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_a_sandbox_carries_who_made_it_and_for_whom() -> None:
    labels = sandbox_labels(deployment="prod", sandbox_id="s1", user_id="alice", project_id="p1")
    assert labels == {
        LABEL_MANAGED: "1",
        LABEL_DEPLOYMENT: "prod",
        LABEL_SANDBOX_ID: "s1",
        LABEL_USER_ID: "alice",
        LABEL_PROJECT_ID: "p1",
    }


def test_the_selector_finds_a_deployments_sandboxes_and_no_others() -> None:
    mine = sandbox_labels(deployment="prod", sandbox_id="s1", user_id="u", project_id="p")
    theirs = sandbox_labels(deployment="staging", sandbox_id="s2", user_id="u", project_id="p")
    assert matches(owned_selector("prod"), mine)
    assert not matches(owned_selector("prod"), theirs)
    assert not matches(owned_selector("prod"), {LABEL_DEPLOYMENT: "prod"})  # not marked ours
    assert matches(owned_selector("prod", sandbox_id="s1"), mine)
    assert not matches(owned_selector("prod", sandbox_id="s2"), mine)


def test_daytona_label_values_are_kept_safe() -> None:
    assert label_value("user@example.com") == "user_example.com"
    assert label_value("") == "_"
    assert len(label_value("x" * 100)) == 63
