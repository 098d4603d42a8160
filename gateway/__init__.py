"""An OpenAI-compatible LLM prompt-and-model gateway.

The public surface is the command line (``gateway --help``), the HTTP APIs (``/v1`` as OpenAI
defines it, ``/admin`` as described by its OpenAPI document, ``/reports``, ``/metrics``,
``/health/*``) and the files it reads (``gateway.yaml``, ``policies/``, ``prompts/``). Those
are what releases keep compatible.

In process, for tools and tests that embed it:

    gateway.config.settings.load_settings   the typed settings
    gateway.runtime.create_runtime          every service, built from the settings
    gateway.core.Core                       runs a RequestContext through the pipeline
    gateway.context                         RequestContext, Origin, the reply types
    gateway.testing.fake_upstream           the fake OpenAI/Anthropic server

Everything else is internal and may change between releases. This module imports nothing, so
``import gateway`` stays free for the CLI's start-up.
"""
