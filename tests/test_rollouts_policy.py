"""policies/rollouts.yaml: validated like every policy file, resolved with the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.catalog import build_catalog
from gateway.config.policies import load_policies
from gateway.config.yamlfile import ConfigError

MODELS = {"aliases": {
    "chat": {"deployments": [{"provider": "mock", "model": "a"}, {"provider": "mock", "model": "b", "weight": 0}]},
    "chat-next": {"deployments": [{"provider": "mock", "model": "c"}]},
    "embed": {"kind": "embedding", "deployments": [{"provider": "mock", "model": "e", "free": True}]},
}}

GOOD = """\
rollouts:
  chat-b:
    description: try b behind chat
    target:
      alias: chat
      canary: {deployment: 1}
    steps:
      - {weight: 5, pause_s: 60}
      - {weight: 50}
      - {weight: 100}
    interval_s: 30
    checks:
      - {metric: error_rate, max_over_stable: 0.02}
      - {metric: p95_ms, max_ratio_to_stable: 1.3}
    match: {teams: [support*]}
  greet-v3:
    target:
      prompt: greet
      label: production
      canary: {version: 3}
    steps: [{weight: 10}, {weight: 100}]
    start: manual
"""


def policies(tmp_path: Path, rollouts: str | None) -> Path:
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(MODELS))
    if rollouts is not None:
        (tmp_path / "rollouts.yaml").write_text(rollouts)
    return tmp_path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        build_catalog(load_policies(policies(tmp_path, text)))
    return "\n".join(caught.value.problems)


def test_the_file_is_optional(tmp_path: Path) -> None:
    catalog = build_catalog(load_policies(policies(tmp_path, None)))
    assert not catalog.rollouts and catalog.rollouts.by_alias == {}


def test_a_valid_file_builds_alias_and_prompt_rollouts(tmp_path: Path) -> None:
    catalog = build_catalog(load_policies(policies(tmp_path, GOOD)))
    alias_rollout = catalog.rollouts.by_id["chat-b"]
    assert alias_rollout.kind == "alias" and alias_rollout.weights == (0.05, 0.5, 1.0)
    assert [d.model for d in alias_rollout.stable] == ["a"] and [d.model for d in alias_rollout.canary] == ["b"]
    assert catalog.rollouts.by_alias == {"chat": (alias_rollout,)}
    prompt_rollout = catalog.rollouts.by_prompt["greet"][0]
    assert (prompt_rollout.kind, prompt_rollout.label, prompt_rollout.canary_version) == ("prompt", "production", 3)
    assert alias_rollout.spec.steps[0].pause_s == 60 and alias_rollout.spec.interval_s == 30


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("chat-b", "stepz", []), "rollouts.chat-b.stepz: Extra inputs are not permitted (did you mean 'steps'?)"),
        (("chat-b", "steps", [{"weight": 50}, {"weight": 10}]), "weights must increase"),
        (("chat-b", "steps", [{"weight": 150}]), "rollouts.chat-b.steps.0.weight"),
        (("chat-b", "checks", [{"metric": "vibes", "max": 1}]), "unknown metric 'vibes'"),
        (("chat-b", "checks", [{"metric": "p99_ms"}]), "a check needs at least one of"),
        (("chat-b", "target", {"alias": "chat", "canary": {"alias": "x", "deployment": 1}}), "exactly one of"),
        (("greet-v3", "target", {"prompt": "greet", "canary": {"alias": "chat"}}), "canary is a version"),
        (("greet-v3", "target", {"prompt": "greet", "label": "latest", "canary": {"version": 2}}), "'latest'"),
        (("chat-b", "match", {"team": ["x"]}), "rollouts.chat-b.match.team: Extra inputs"),
    ],
)
def test_mistakes_are_refused_naming_file_line_and_field(
    tmp_path: Path, change: tuple[str, str, object], expected: str
) -> None:
    data = yaml.safe_load(GOOD)
    rollout_id, field, value = change
    data["rollouts"][rollout_id][field] = value
    found = problems(tmp_path, yaml.safe_dump(data))
    assert expected in found
    assert "rollouts.yaml:" in found


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"alias": "nope", "canary": {"deployment": 0}}, "target.alias: no model alias 'nope'"),
        ({"alias": "chat", "canary": {"alias": "nope"}}, "target.canary.alias: no model alias 'nope'"),
        ({"alias": "chat", "canary": {"alias": "embed"}}, "must be another chat alias"),
        ({"alias": "chat", "canary": {"deployment": 2}}, "has 2 deployment(s)"),
        ({"alias": "chat-next", "canary": {"deployment": 0}}, "has 1 deployment(s)"),
    ],
)
def test_targets_are_checked_against_the_models(tmp_path: Path, target: dict[str, object], expected: str) -> None:
    data = yaml.safe_load(GOOD)
    data["rollouts"]["chat-b"]["target"] = target
    found = problems(tmp_path, yaml.safe_dump(data))
    assert "rollouts.yaml: rollouts.chat-b.target" in found and expected in found


def test_ids_must_be_plain_and_one_rollout_per_prompt_label(tmp_path: Path) -> None:
    data = yaml.safe_load(GOOD)
    data["rollouts"]["Bad Id"] = data["rollouts"].pop("chat-b")
    assert "rollout id 'Bad Id'" in problems(tmp_path, yaml.safe_dump(data))
    data = yaml.safe_load(GOOD)
    data["rollouts"]["greet-v4"] = {**data["rollouts"]["greet-v3"],
                                    "target": {"prompt": "greet", "canary": {"version": 4}}}
    assert "already has rollout 'greet-v3'" in problems(tmp_path, yaml.safe_dump(data))


def test_a_protected_label_is_never_rolled_out_by_applying_a_file(tmp_path: Path) -> None:
    data = yaml.safe_load(GOOD)
    data["rollouts"]["greet-v3"]["start"] = "auto"
    found = problems(tmp_path, yaml.safe_dump(data))
    assert "rollouts.yaml: rollouts.greet-v3.start: the label 'production' is protected" in found
    data["rollouts"]["greet-v3"]["target"]["label"] = "beta"  # not protected: auto is fine
    (tmp_path / "rollouts.yaml").write_text(yaml.safe_dump(data))
    assert build_catalog(load_policies(tmp_path)).rollouts.by_prompt["greet"][0].label == "beta"
