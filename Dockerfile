# Multi-stage build: compile with the pinned toolchain, run as an unprivileged user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin warden
COPY --from=build /src/target/release/warden /usr/local/bin/warden
COPY config /etc/warden
COPY policies /etc/warden/policies
USER 10001:10001
ENV WARDEN_CONFIG=/etc/warden/warden.toml \
    WARDEN_SERVER__LISTEN=0.0.0.0:8080 \
    WARDEN_GUARD__POLICIES_DIR=/etc/warden/policies
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/warden"]
CMD ["serve"]
