"""The prompt repository: versioned, signed prompts served as ``model: "prompt:NAME[@LABEL|@vN]"``.

    source.py     the authoring format (YAML + JSONL golden cases), validation, canonical content
    refs.py       NAME, NAME@LABEL, NAME@vN
    render.py     Jinja2 sandbox, templates compiled once per version
    variables.py  the caller's variables against the prompt's JSON Schema, in microseconds
    signing.py    Ed25519 signatures over (name, version, sha256)
    store.py      versions, labels, label history, evaluation runs (SQL)
    service.py    push / label / promote / rollback / show / history / diff / eval, with role checks
    resolver.py   the request path: in-process caches, variables, rendering, parameters
    sync.py       label moves reaching every replica (Redis pub/sub + polling)
    evals/        expectations and the runner that drives the gateway's own pipeline
    errors.py     a refused push; a version that fails its integrity check
    repository.py wiring into a server runtime or a CLI command
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.prompts.repository import PromptRepository, build_prompts, open_service
    from gateway.prompts.service import Caller, PromptService

__all__ = ["Caller", "PromptRepository", "PromptService", "build_prompts", "open_service"]


def __getattr__(name: str) -> Any:
    # Each side loads when first asked for: the authoring side (service: YAML, JSON Schema,
    # Jinja2, evaluators) only for the admin API or the CLI, and the wiring (storage, Redis,
    # metrics) not at all for the CLI's remote mode, which imports this package's light
    # modules (errors, refs, source) to validate prompt files.
    if name in ("Caller", "PromptService"):
        from gateway.prompts import service

        return getattr(service, name)
    if name in ("PromptRepository", "build_prompts", "open_service"):
        from gateway.prompts import repository

        return getattr(repository, name)
    raise AttributeError(f"module 'gateway.prompts' has no attribute {name!r}")
