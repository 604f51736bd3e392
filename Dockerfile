# Tessera: build the release binary, run it on a slim Debian with the two client
# libraries it links (libpq, SQLite).
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev libsqlite3-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin tessera

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 libsqlite3-0 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
WORKDIR /var/lib/tessera
EXPOSE 8443
# `init` is idempotent: the first start creates config, dev PKI and schema; later
# starts keep them (they live in the tessera-data volume). The server certificate also
# names `arr`, the compose file's development audit repository, which presents it.
CMD ["sh", "-c", "tessera init --dir /var/lib/tessera --hostname tessera --hostname localhost --hostname arr && exec tessera serve"]
