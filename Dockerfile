# The gateway as a container: `gateway serve` on 0.0.0.0:8080 as an unprivileged user.
#
#   docker build -t llm-gateway .
#   docker run -p 8080:8080 -e GATEWAY_ADMIN_KEY=... -e OPENAI_API_KEY=... -v gateway-data:/data llm-gateway
#   docker run --rm -v gateway-data:/data llm-gateway keys create --team demo     # any CLI command
#
# EXTRAS picks optional dependencies (e.g. "tracing"). litellm, which ships the price map and
# the offline tiktoken encodings, is a core dependency; "providers" is kept as a no-op alias.
FROM python:3.11-slim

ARG EXTRAS=providers

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every runtime dependency has a manylinux wheel for CPython 3.11, so no compiler is needed.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN if [ -n "$EXTRAS" ]; then pip install ".[${EXTRAS}]"; else pip install .; fi \
    && rm -rf /build

# The configuration the gateway runs with: the shipped gateway.yaml, policies and prompts.
# Mount your own over /srv/gateway/policies and /srv/gateway/prompts (or the whole directory).
# The SQLite database lives on the /data volume, so keys survive a new container.
RUN useradd --system --uid 10001 --user-group --home-dir /srv/gateway --shell /usr/sbin/nologin gateway \
    && mkdir -p /srv/gateway /data \
    && chown gateway:gateway /srv/gateway /data
WORKDIR /srv/gateway
COPY --chown=gateway:gateway gateway.yaml ./
COPY --chown=gateway:gateway policies ./policies
COPY --chown=gateway:gateway prompts ./prompts

ENV GATEWAY_CONFIG=/srv/gateway/gateway.yaml \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    DATABASE_URL=sqlite:////data/gateway.db

USER gateway
VOLUME ["/data"]
EXPOSE 8080

# slim has no curl: ask /health/live with the standard library (a non-2xx raises, exit 1).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_PORT', '8080') + '/health/live', timeout=2)" || exit 1

ENTRYPOINT ["gateway"]
CMD ["serve"]
