#!/usr/bin/env bash
# Build both images; with --registry, also push them and write what was pushed.
#   tools/build_and_push.sh [--registry REGISTRY] [--tag TAG] [--output FILE]
# Images: ${TRAIN_REPOSITORY:-dagm-defects-train} and ${SERVE_REPOSITORY:-dagm-defects-serve},
# each tagged TAG (default: the git commit) and `latest`. With --registry (e.g.
# 123456789012.dkr.ecr.eu-west-1.amazonaws.com; log in first), the registry's `latest`
# is pulled as a build cache, both tags are pushed, and FILE (default images.json) names
# the pushed image URIs and digests for the deploy stage. buildspec.yml runs this script.
# The OCI labels: source (SOURCE_URL, else CodeBuild's CODEBUILD_SOURCE_REPO_URL, else the
# git remote), revision (the full commit) and version (code/pyproject.toml's).
set -euo pipefail
cd "$(dirname "$0")/.."
registry="" tag="" output="images.json"
while [ $# -gt 0 ]; do
    case "$1" in
        --registry) registry="${2:?--registry needs a value}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --output) output="${2:?--output needs a value}"; shift 2 ;;
        *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; echo "error: unknown argument '$1'" >&2; exit 64 ;;
    esac
done
revision="${CODEBUILD_RESOLVED_SOURCE_VERSION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
tag="${tag:-$revision}"
source_url="${SOURCE_URL:-${CODEBUILD_SOURCE_REPO_URL:-$(git remote get-url origin 2>/dev/null || echo unknown)}}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' code/pyproject.toml)"
prefix="${registry:+$registry/}"
declare -A repositories=([train]="${TRAIN_REPOSITORY:-dagm-defects-train}" [serve]="${SERVE_REPOSITORY:-dagm-defects-serve}")

for kind in train serve; do
    image="$prefix${repositories[$kind]}"
    cache=()
    if [ -n "$registry" ] && docker pull "$image:latest" >/dev/null 2>&1; then
        cache=(--cache-from "$image:latest")
    fi
    echo "== building $image:$tag from Dockerfile.$kind"
    DOCKER_BUILDKIT=1 docker build "${cache[@]}" --build-arg BUILDKIT_INLINE_CACHE=1 \
        --build-arg SOURCE="$source_url" --build-arg REVISION="$revision" --build-arg VERSION="$version" \
        -f "Dockerfile.$kind" -t "$image:$tag" -t "$image:latest" .
done
[ -n "$registry" ] || exit 0

for kind in train serve; do
    image="$prefix${repositories[$kind]}"
    docker push "$image:$tag"
    docker push "$image:latest"
done
{
    printf '{\n  "tag": "%s"' "$tag"
    for kind in train serve; do
        image="$prefix${repositories[$kind]}"
        digest="$(docker inspect --format '{{index .RepoDigests 0}}' "$image:$tag")"
        printf ',\n  "%s": {"uri": "%s", "digest_uri": "%s", "digest": "%s"}' \
            "$kind" "$image:$tag" "$digest" "${digest##*@}"
    done
    printf '\n}\n'
} > "$output"
echo "pushed; wrote $output"
cat "$output"
