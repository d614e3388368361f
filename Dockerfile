# claude-agent-http: build the release binary, then a slim runtime with Node.js and the pinned
# Claude Code CLI. Runs as a non-root user (so the CLI needs no IS_SANDBOX for bypassPermissions).
#   docker build -t claude-agent-http .
#   docker run -p 8000:8000 -e ANTHROPIC_API_KEY=sk-ant-… -v users:/data/users -v service:/data/service claude-agent-http

ARG RUST_VERSION=1.95
ARG NODE_VERSION=22

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --bin claude-agent-http

FROM node:${NODE_VERSION}-bookworm-slim AS runtime
# The CLI version the service is tested with (scripts/install-cli pins the same one).
ARG CLAUDE_CLI_VERSION=2.1.330
RUN npm install --global --no-audit --no-fund "@anthropic-ai/claude-code@${CLAUDE_CLI_VERSION}" \
    && npm cache clean --force \
    && claude --version \
    && groupadd --system --gid 10001 agent \
    && useradd --system --uid 10001 --gid agent --home-dir /data --shell /usr/sbin/nologin agent \
    && mkdir -p /data/users /data/service \
    && chown -R agent:agent /data
COPY --from=build /src/target/release/claude-agent-http /usr/local/bin/claude-agent-http
COPY Settings.toml /etc/claude-agent-http/Settings.toml
ENV CLAUDE_AGENT_CONFIG=/etc/claude-agent-http/Settings.toml \
    CLAUDE_AGENT_API__HOST=0.0.0.0 \
    CLAUDE_AGENT_USER__BASE_DIR=/data/users \
    CLAUDE_AGENT_DATA__DIR=/data/service \
    CLAUDE_AGENT_SESSION__SQLITE_PATH=/data/service/claude-agent-http.db \
    CLAUDE_AGENT_CLI__PATH=/usr/local/bin/claude \
    HOME=/data \
    RUST_LOG=info
USER 10001:10001
WORKDIR /data
VOLUME ["/data/users", "/data/service"]
EXPOSE 8000
# The binary asks its own /health: no curl in the image.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 CMD ["claude-agent-http", "healthcheck"]
ENTRYPOINT ["claude-agent-http"]
