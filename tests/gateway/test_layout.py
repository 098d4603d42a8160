"""The package layout keeps the request path readable: rules, checked on the source.

- Every stage is the ``stage.py`` of its own package, and no stage module imports another
  stage's package (type-only imports included): stages meet only through the context.
- No feature package imports ``gateway.runtime``: features are built from explicit inputs and
  the runtime assembles them (an import circle through runtime.py is how it was before).
- Each stage's docstring numbers it in the order ``Runtime.build`` runs it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gateway.runtime

PACKAGE = Path(gateway.runtime.__file__).parent
#: Stage packages, in pipeline order (the number each stage's docstring must carry).
STAGES = ["observe", "auth", "parse", "resolve", "routing", "cache", "usage", "budgets", "upstream"]
#: What may import the runtime: the surfaces that serve it (HTTP, admin API, CLI, finance page).
SURFACES = {"server", "admin", "cli", "reports"}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_every_stage_is_a_stage_module_of_its_own_package() -> None:
    assert sorted(p.parent.name for p in PACKAGE.glob("*/stage.py")) == sorted(STAGES)


def test_no_stage_module_imports_another_stages_package() -> None:
    crossings = []
    for name in STAGES:
        for module in sorted(imported_modules(PACKAGE / name / "stage.py")):
            parts = module.split(".")
            if parts[0] == "gateway" and len(parts) > 1 and parts[1] in STAGES and parts[1] != name:
                crossings.append(f"gateway/{name}/stage.py imports {module}")
    assert crossings == []


def test_no_feature_package_imports_the_runtime() -> None:
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in SURFACES or relative == Path("runtime.py"):
            continue
        if any(m == "gateway.runtime" or m.startswith("gateway.runtime.") for m in imported_modules(path)):
            importers.append(str(relative))
    assert importers == []


def test_stage_docstrings_number_the_stages_in_pipeline_order() -> None:
    for number, name in enumerate(STAGES, start=1):
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "stage.py").read_text())) or ""
        assert re.match(rf"Stage {number}\b", doc), f"gateway/{name}/stage.py should start 'Stage {number}'"


def test_the_runtime_builds_the_stages_in_that_order() -> None:
    source = (PACKAGE / "runtime.py").read_text()
    build = source[source.index("    def build(self)"):]
    order = [
        build.index(marker)
        for marker in ("self.record", "Authenticate(", "ParseRequest(", "Resolve(", "Route(", "self.cache",
                       "self.usage", "self.budget", "CallUpstream(")
    ]
    assert order == sorted(order)
