# syntax=docker/dockerfile:1
# The hosted, multi-tenant server: every request carries its own TensorFeed token, state lives in PostgreSQL
# (TENSORFEED_MCP_DATABASE_URL), so any number of these containers can stand behind one load balancer.
# compose.yaml runs two of them behind nginx.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY tensorfeed_mcp ./tensorfeed_mcp
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheel is mounted for the install only, so no layer keeps a copy; its dependencies come from the index.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    wheel="$(echo /wheels/tensorfeed_mcp-*.whl)" \
    && pip install --no-cache-dir "${wheel}[hosted]"
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin tensorfeed
# By number, so an orchestrator can verify the user is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/tensorfeed
EXPOSE 8000
# The slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["tensorfeed-mcp", "serve", "--transport", "streamable-http", "--multi-tenant", "--host", "0.0.0.0", "--port", "8000"]
