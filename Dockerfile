# syntax=docker/dockerfile:1
# Multi-stage build: dependencies compile in their own layer (rebuilt only when Cargo.toml or
# Cargo.lock change), the gateway in the next; the runtime image is Debian slim with CA
# certificates, curl for the health check, and a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# 1. Dependencies only: the manifest with empty sources. This layer is cached until the
#    manifest or the lock file changes, so a source edit rebuilds only the gateway itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin switchyard \
 && rm -rf src
# 2. The gateway. `touch` makes sure cargo sees the real sources as newer than the stubs.
COPY src src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin switchyard \
 && strip target/release/switchyard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY tenants /etc/switchyard/tenants
# Listen on every interface inside the container; tenants from the mounted directory.
ENV SWITCHYARD_LISTEN=0.0.0.0:8080 \
    SWITCHYARD_TENANTS=/etc/switchyard/tenants \
    SWITCHYARD_LOG_FORMAT=json
USER 10001
EXPOSE 8080
# Ready = configuration loaded and not draining (503 once SIGTERM arrives).
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/readyz >/dev/null || exit 1
# SIGTERM drains: /readyz 503, listener closed, in-flight requests finish (30 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchyard"]
CMD ["serve"]
