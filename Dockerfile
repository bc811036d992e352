# shaperrd beside Plex: `docker compose up -d` with examples/docker-compose.yml, or `docker build -t shaperr:local .`
# BASE is any image with node ≥ 20 and npm in its PATH: the official slim image by default; `npm run image`
# passes a base made locally from Debian's packages (no registry). Nothing here is architecture-specific:
# npm picks koffi's prebuilt binary for the platform it runs on (amd64, arm64, …).
ARG BASE=docker.io/library/node:20-bookworm-slim

FROM ${BASE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# npm's download cache lives in a build cache mount: a rebuild fetches nothing it already has. No install
# scripts: koffi's only checks that its prebuilt binary loads, and the binary is its own npm package.
# A network that inspects TLS hands its CA bundle in as the build secret `ca` (never part of an image).
RUN --mount=type=cache,target=/root/.npm,sharing=locked --mount=type=secret,id=ca \
  if [ -f /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi \
  && npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY lib lib
COPY daemon daemon
COPY native-bindings native-bindings
RUN npx tsc -p tsconfig.json \
  && npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
  && find dist -name '*.map' -delete \
  && chmod 0755 dist/daemon/cli.js dist/daemon/operator/shaperr-cli.js

FROM ${BASE}
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
# The default places of the config and the state file are links into the /config volume: the root
# filesystem can be read-only, and `docker exec shaperr shaperr check` finds the config with no option.
RUN ln -s /app/dist/daemon/cli.js /usr/local/bin/shaperrd \
  && ln -s /app/dist/daemon/operator/shaperr-cli.js /usr/local/bin/shaperr \
  && ln -s /config /var/lib/shaperr \
  && ln -s /config /etc/shaperr
# Plex's own config folder, mounted read-only at /plex: its log and Preferences.xml (the token) are found
# there with nothing configured. TZ (e.g. Europe/Paris) sets the local time of schedules and log lines.
ENV PLEX_MEDIA_SERVER_APPLICATION_SUPPORT_DIR="/plex/Library/Application Support"
VOLUME ["/config"]
# Healthy while shaperrd runs and its tree is on the device; a tree deleted behind its back is unhealthy
# until shaperrd has put it back.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=2 \
  CMD ["shaperr", "--config", "/config/shaperr.yaml", "health"]
ENTRYPOINT ["shaperrd", "--config", "/config/shaperr.yaml"]
