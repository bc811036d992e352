#!/usr/bin/env bash
# `npm run image`: builds localhost/shaperr:latest on this machine without any container registry.
#
# The repository's Dockerfile takes its base image as an ARG. Users build on the official node:20 slim
# image; here the base is made locally, the way that image is laid out: a Debian minbase root (debootstrap,
# from Debian's package mirror) with this machine's node and npm in /usr/local. The root is cached as a
# tarball in container/cache/ (git-ignored) and imported once into podman's store, so a second run only
# builds the Dockerfile. podman, runc and debootstrap come from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=bookworm # the release this machine's node is linked against (glibc); any Debian ≥ 12 works
node_major=$(node -p 'process.versions.node.split(".")[0]')
base="localhost/shaperr-base:${suite}-node${node_major}"
image="localhost/shaperr:latest"
compose_image="localhost/shaperr:local" # the name examples/docker-compose.yml gives what it builds
cache=container/cache
tarball="$cache/${suite}-node$(node -p process.versions.node).tar"
# crun refuses this kernel's hybrid cgroups; podman's default file and process limits exceed the hard ones.
podman=(podman --runtime runc)
limits=(--ulimit nofile=1024:20000 --ulimit nproc=1024:1024)

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! "${podman[@]}" image exists "$base"; then
  if [ ! -f "$tarball" ]; then
    root="$cache/rootfs"
    rm -rf "$root" && mkdir -p "$root"
    echo "image: making the local base (debootstrap --variant=minbase $suite)"
    debootstrap --variant=minbase "$suite" "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
      { tail -n 20 "$cache/debootstrap.log"; exit 1; }
    # node and npm where the official image keeps them (/usr/local), so the Dockerfile's paths hold on both.
    install -D -m 0755 "$(command -v node)" "$root/usr/local/bin/node"
    mkdir -p "$root/usr/local/lib/node_modules"
    cp -a "$(npm root -g)/npm" "$root/usr/local/lib/node_modules/npm"
    ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
    ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
    # What a slim image leaves out: package lists and caches, documentation, manual pages, locales.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    tar --numeric-owner -C "$root" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
    rm -rf "$root"
  fi
  "${podman[@]}" import --change 'CMD ["node"]' "$tarball" "$base" >/dev/null
fi

# The build stage reaches the npm registry (npm ci); host networking spares a bridge for it. Where this
# machine trusts an extra CA (a TLS-inspecting proxy), npm inside the build is handed the same bundle.
secret=()
[ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f "$NODE_EXTRA_CA_CERTS" ] && secret=(--secret "id=ca,src=$NODE_EXTRA_CA_CERTS")
"${podman[@]}" build --format docker --network host "${limits[@]}" "${secret[@]}" --build-arg "BASE=$base" --tag "$image" --tag "$compose_image" .
