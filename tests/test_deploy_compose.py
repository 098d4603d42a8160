"""deploy/compose.yaml validates against the Compose specification's JSON schema (the copy
check-jsonschema ships, from github.com/compose-spec/compose-spec), and its parts fit
together: two replicas behind the load balancer, Prometheus scraping both and loading the
alert rules, Grafana provisioned with the dashboard, every mounted file present."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def compose_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return dict(json.loads(vendored.read_text()))


def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    errors = sorted(validator(schema).iter_errors(compose()), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


def test_the_schema_catches_a_mistake() -> None:
    broken = compose()
    broken["services"]["gateway-1"]["restart_policy"] = "always"  # not a service field
    schema = compose_schema()
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_two_replicas_share_postgres_and_redis_behind_the_load_balancer() -> None:
    services = compose()["services"]
    replicas = sorted(name for name, spec in services.items() if spec.get("image") == "llm-gateway:local")
    assert replicas == ["gateway-1", "gateway-2"]
    for name in replicas:
        spec = services[name]
        assert spec["environment"]["DATABASE_URL"].startswith("postgresql://")
        assert spec["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert spec["read_only"] is True and spec["user"].startswith("10001:")
        assert set(spec["depends_on"]) == {"postgres", "redis"}
    assert services["gateway-1"]["environment"] == services["gateway-2"]["environment"]
    nginx = (DEPLOY / "compose" / "nginx.conf").read_text()
    assert sorted(re.findall(r"server (gateway-\d):8080", nginx)) == replicas
    assert "proxy_buffering off" in nginx  # streams must not be held back
    assert set(services) >= {"lb", "postgres", "redis", "prometheus", "grafana"}


def test_every_mounted_file_exists() -> None:
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} is missing"


def test_prometheus_scrapes_both_replicas_and_loads_the_rules() -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "llm-gateway"  # the rules' up{job="llm-gateway"}
    assert sorted(job["static_configs"][0]["targets"]) == ["gateway-1:8080", "gateway-2:8080"]
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yaml:/etc/prometheus/alerts.yaml:ro" in mounts
    assert config["rule_files"] == ["alerts.yaml"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    # Laid out as the container sees /etc/prometheus.
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yaml", tmp_path / "alerts.yaml")
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    mounts = compose()["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "llm-gateway.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "llm-gateway.json").read_text())
    assert dashboard["uid"] == "llm-gateway"
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dashboard["templating"]["list"])


def test_stop_grace_covers_the_graceful_stop_and_ledger_flush() -> None:
    from gateway.config.settings import Settings

    defaults = Settings()
    grace = compose()["services"]["gateway-1"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > defaults.server.graceful_timeout_s + defaults.ledger.shutdown_timeout_s


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed")
def test_docker_compose_config_when_available() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker client has no compose plugin")
    env = {**os.environ, "GATEWAY_ADMIN_KEY": "x" * 24, "GATEWAY_PROMPT_SIGNING_KEY": "y" * 43}
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
