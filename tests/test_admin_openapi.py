"""The admin API does what its OpenAPI description says: schemathesis finds no 5xx and no
undocumented status, content type, header or response shape.

The description once documented 422 where the API answers 400, and timestamps left out their
UTC offset. Checks left out, and why: ``positive_data_acceptance`` (a schema cannot say that a
prompt's ``source`` must be valid YAML naming an existing model, so schema-valid bodies are
rightly refused) and ``negative_data_rejection`` (pydantic's lax mode takes ``"0.5"`` as a unix
timestamp and ``"true"`` as a boolean, on purpose).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support.gateway_proc import ADMIN_KEY, GatewayProcess

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance,unsupported_method")


def schemathesis_command() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    return [found]


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_conformance_failure(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    result = subprocess.run(
        [*schemathesis_command(), "run", f"{gateway.url}/openapi.json", "--url", gateway.url,
         "-H", f"Authorization: Bearer {ADMIN_KEY}", "--checks", CHECKS, "--max-examples", "10",
         "--seed", "1", "--no-color", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_the_description_documents_400_not_422_and_utc_timestamps(gateway: GatewayProcess) -> None:
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    operations = [op for item in schema["paths"].values() for op in item.values()]
    assert all("422" not in op["responses"] and "400" in op["responses"] for op in operations)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    bad = httpx.get(f"{gateway.url}/admin/keys", params={"include_revoked": "maybe"}, headers=headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    created = httpx.post(f"{gateway.url}/admin/keys", json={"team": "alpha"}, headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    listed = httpx.get(f"{gateway.url}/admin/keys", headers=headers, timeout=30).json()
    assert listed and all(row["created_at"].endswith(("Z", "+00:00")) for row in listed)


def test_a_405_names_every_method_the_resource_takes(gateway: GatewayProcess) -> None:
    response = httpx.request("TRACE", f"{gateway.url}/admin/prompts", timeout=30,
                             headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
