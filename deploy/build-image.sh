#!/usr/bin/env bash
# Build the dlr container image (both binaries: /usr/local/bin/ingest and /usr/local/bin/worker).
#
#   deploy/build-image.sh [IMAGE]
#       Builds deploy/Dockerfile with docker, podman or buildah, whichever is found first.
#       Pulls the rust and distroless base images, so it needs registry access.
#
#   deploy/build-image.sh --offline [IMAGE]
#       No registry: builds the release binaries on this host (Debian 12, the distroless base's
#       release) and assembles a FROM-scratch image with buildah from the binaries, the shared
#       libraries they load, the CA bundle and a 65532 `nonroot` user. Same layout as the
#       Dockerfile's image. Also writes target/dlr-image.oci.tar (`podman load -i`, or
#       `skopeo copy oci-archive:target/dlr-image.oci.tar docker://REGISTRY/dlr:TAG`).
#       BIN_DIR overrides where the binaries are taken from (default target/release).
#
# IMAGE defaults to dlr:dev.
set -euo pipefail

cd "$(dirname "$0")/.."

offline=false
if [[ ${1:-} == --offline ]]; then
    offline=true
    shift
fi
image=${1:-dlr:dev}

if ! $offline; then
    for engine in docker podman; do
        if command -v "$engine" >/dev/null && "$engine" info >/dev/null 2>&1; then
            echo "building $image with $engine"
            DOCKER_BUILDKIT=1 exec "$engine" build -f deploy/Dockerfile -t "$image" .
        fi
    done
    if command -v buildah >/dev/null; then
        echo "building $image with buildah"
        exec buildah build --layers -f deploy/Dockerfile -t "$image" .
    fi
    echo "no docker daemon, podman or buildah found; try: $0 --offline" >&2
    exit 1
fi

command -v buildah >/dev/null || {
    echo "buildah is required for --offline (Debian: apt-get install buildah)" >&2
    exit 1
}
# vfs works without privileges or fuse-overlayfs (CI containers); the image is small.
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}

bin_dir=${BIN_DIR:-target/release}
if [[ ! -x $bin_dir/ingest || ! -x $bin_dir/worker ]]; then
    cargo build --release --locked -p dlr-ingest -p dlr-worker
    bin_dir=target/release
fi

stage=$(mktemp -d)
chmod 0755 "$stage"
container=
cleanup() {
    rm -rf "$stage"
    if [[ -n $container ]]; then buildah rm "$container" >/dev/null; fi
}
trap cleanup EXIT

install -D -m 0755 -t "$stage/usr/local/bin" "$bin_dir/ingest" "$bin_dir/worker"
# The dynamic loader and every library the binaries link (glibc, libgcc_s, ...), at their
# host paths. glibc >= 2.34 has the files/dns NSS modules built in: nothing is dlopen'ed.
libs=$(for bin in ingest worker; do ldd "$bin_dir/$bin"; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libs; do
    cp -L --parents "$lib" "$stage"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$stage/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$stage/etc/group"
printf 'hosts: files dns\n' >"$stage/etc/nsswitch.conf"
install -d -m 1777 "$stage/tmp"

container=$(buildah from scratch)
buildah copy --chown 0:0 "$container" "$stage" / >/dev/null
buildah config \
    --user 65532:65532 \
    --port 8080 --port 9090 \
    --entrypoint '["/usr/local/bin/ingest"]' \
    "$container"
buildah commit --quiet --rm "$container" "$image" >/dev/null
container=
mkdir -p target
rm -f target/dlr-image.oci.tar
buildah push --quiet "$image" "oci-archive:target/dlr-image.oci.tar:$image" >/dev/null
echo "built $image (buildah storage: $STORAGE_DRIVER) and target/dlr-image.oci.tar"
