#!/usr/bin/env bash
# Builds Trellis's container images as OCI image layouts from binaries cargo has already built,
# without a container engine (umoci writes the layouts). images/README.md says what each image
# holds; images/Dockerfile builds the same images with docker or podman, from the same staged
# files (this script's --stage-only).
#
#   scripts/build-pgo.sh && cargo build --release --locked \
#     -p trellis-control-plane -p trellis-injector -p trellis-proxy-init -p trellis-cni
#   scripts/build-images.sh                     # -> target/images/<name>, ref 0.1.0
#   skopeo copy oci:target/images/proxy:0.1.0 docker://ghcr.io/trellis-mesh/proxy:0.1.0
#
# Options:
#   --profile NAME     cargo profile the binaries come from (default: release, the shipping
#                      build: every binary from <target>/release except the proxy, which ships
#                      tuned, from scripts/build-pgo.sh's <target>/pgo/release). dev, test and
#                      debug mean <target>/debug.
#   --target-dir DIR   cargo's target directory (default: $CARGO_TARGET_DIR, else target)
#   --bin-dir DIR      take every binary from DIR instead (e.g. target/debug for a test build)
#   --untuned-proxy    with --profile release, ship the plain release proxy (no PGO build)
#   --output DIR       where the layouts go, one per image (default: <target>/images)
#   --hub HUB          registry and organisation, as the chart's global.hub
#                      (default: ghcr.io/trellis-mesh)
#   --tag TAG          the layouts' reference and the chart's global.tag (default: the
#                      workspace version, the chart's appVersion)
#   --stage-only DIR   only write each image's file tree to DIR/<name> (no umoci; what
#                      images/Dockerfile copies into its FROM scratch stages)
#   IMAGE...           some of: trellisd proxy proxy-init injector cni (default: all)
#
# Each image holds its binary in /usr/local/bin, the shared libraries it loads (found with ldd,
# the dynamic loader included), minimal /etc/passwd, /etc/group and /etc/nsswitch.conf, and /tmp;
# the proxy and trellisd also the CA bundle (TLS origination, JWKS fetches), and proxy-init nft
# and the iptables tools it runs. No shell, no package manager. As root, missing tools (umoci,
# nft, iptables, the CA bundle) are installed with apt-get.
set -euo pipefail
# Paths given on the command line are the caller's; the script works from the repository's root.
caller=$PWD
self=$(realpath "$0")
from_caller() {
  case $1 in
    /*) echo "$1" ;;
    *) echo "$caller/$1" ;;
  esac
}
cd "$(dirname "$0")/.."

ALL_IMAGES=(trellisd proxy proxy-init injector cni)
target_dir=target
[ -z "${CARGO_TARGET_DIR:-}" ] || target_dir=$(from_caller "$CARGO_TARGET_DIR")
profile=release
bin_dir=""
untuned_proxy=false
output=""
stage_only=""
hub=ghcr.io/trellis-mesh
tag=""
images=()

die() {
  echo "build-images: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs a value}; shift 2 ;;
    --target-dir) target_dir=$(from_caller "${2:?--target-dir needs a value}"); shift 2 ;;
    --bin-dir) bin_dir=$(from_caller "${2:?--bin-dir needs a value}"); shift 2 ;;
    --untuned-proxy) untuned_proxy=true; shift ;;
    --output) output=$(from_caller "${2:?--output needs a value}"); shift 2 ;;
    --hub) hub=${2:?--hub needs a value}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --stage-only) stage_only=$(from_caller "${2:?--stage-only needs a value}"); shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [[ " ${ALL_IMAGES[*]} " == *" $1 "* ]] || die "unknown image $1 (one of: ${ALL_IMAGES[*]})"
      images+=("$1")
      shift
      ;;
  esac
done
[ ${#images[@]} -gt 0 ] || images=("${ALL_IMAGES[@]}")

version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
tag=${tag:-$version}
# An OCI reference name (the layout's tag): what a registry accepts as a tag.
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag $tag is not a valid image tag"
hub=${hub%/}
output=${output:-$target_dir/images}
repository=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^repository = "\(.*\)"$/\1/p' Cargo.toml)
license=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^license = "\(.*\)"$/\1/p' Cargo.toml)

# --- What each image is ---------------------------------------------------------------------
# Kept in step with images/Dockerfile (cli/tests/images.rs compares the two).

image_binary() {
  case $1 in
    trellisd) echo trellisd ;;
    proxy) echo trellis-proxy ;;
    proxy-init) echo trellis-proxy-init ;;
    injector) echo trellis-injector ;;
    cni) echo trellis-cni ;;
  esac
}

image_package() {
  case $1 in
    trellisd) echo trellis-control-plane ;;
    cni) echo trellis-cni ;;
    *) echo "trellis-$1" ;;
  esac
}

# As Istio's: the proxy runs as 1337 (its traffic is never captured); trellisd and the injector
# as distroless's nonroot (the chart's runAsUser); the redirect and the CNI node agent as root,
# with the capabilities the injection template and the chart give them.
image_user() {
  case $1 in
    proxy) echo 1337:1337 ;;
    trellisd | injector) echo 65532:65532 ;;
    proxy-init | cni) echo 0:0 ;;
  esac
}

image_ports() {
  case $1 in
    trellisd) echo 15010/tcp 15012/tcp 15014/tcp ;;
    proxy) echo 15001/tcp 15006/tcp 15020/tcp 15021/tcp 15090/tcp ;;
    injector) echo 15017/tcp ;;
  esac
}

# The default arguments after the entrypoint (the chart and the template set their own).
image_cmd() {
  case $1 in
    cni) echo install ;;
  esac
}

image_description() {
  case $1 in
    trellisd) echo "Trellis control plane: Istio config to delta xDS, and the mesh CA" ;;
    proxy) echo "Trellis sidecar proxy" ;;
    proxy-init) echo "Trellis traffic redirect (init container): nft or iptables rules in the pod's network namespace" ;;
    injector) echo "Trellis sidecar injector: Istio-compatible mutating admission webhook" ;;
    cni) echo "Trellis chained CNI plugin and its node agent" ;;
  esac
}

PATH_IN_IMAGE=/usr/local/bin:/usr/sbin:/usr/bin

# --- Tools ----------------------------------------------------------------------------------

# need FILE PACKAGE: FILE must exist; as root on Debian, installs PACKAGE when it does not.
need() {
  [ -e "$1" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "build-images: installing $2" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  fi
  [ -e "$1" ] || die "$1 is missing: install the Debian package $2"
}

# --- Where the binaries are -----------------------------------------------------------------

case $profile in
  dev | test | debug) profile_dir=debug ;;
  release | bench) profile_dir=release ;;
  *) profile_dir=$profile ;;
esac

binary_path() {
  local bin=$1
  if [ -n "$bin_dir" ]; then
    echo "$bin_dir/$bin"
  elif [ "$bin" = trellis-proxy ] && [ "$profile_dir" = release ] && ! $untuned_proxy; then
    echo "$target_dir/pgo/release/$bin"
  else
    echo "$target_dir/$profile_dir/$bin"
  fi
}

build_description() {
  if [ -n "$bin_dir" ]; then
    echo "binaries from $bin_dir"
  elif [ "$profile_dir" = release ] && ! $untuned_proxy; then
    echo "release (proxy: PGO)"
  else
    echo "$profile"
  fi
}

for name in "${images[@]}"; do
  bin=$(image_binary "$name")
  path=$(binary_path "$bin")
  if [ ! -x "$path" ]; then
    if [ "$bin" = trellis-proxy ] && [ -z "$bin_dir" ] && [ "$profile_dir" = release ] && ! $untuned_proxy; then
      die "$path is missing: the proxy ships tuned; build it with scripts/build-pgo.sh (or pass --untuned-proxy)"
    fi
    die "$path is missing: build it first (cargo build --locked --profile $profile -p $(image_package "$name"))"
  fi
done

# --- Staging an image's files ---------------------------------------------------------------

# copy_file ROOTFS SOURCE: SOURCE's contents (symlinks followed) at the same path in ROOTFS,
# under its directory's real path (so /lib/x86_64-linux-gnu/libc.so.6 lands in
# /usr/lib/x86_64-linux-gnu on a merged-/usr system, reachable through the /lib link).
copy_file() {
  local rootfs=$1 source=$2 dir dest
  dir=$(realpath -m "$(dirname "$source")")
  dest="$rootfs$dir/$(basename "$source")"
  [ -e "$dest" ] && return 0
  mkdir -p "$rootfs$dir"
  cp -L --preserve=mode "$source" "$dest"
}

# copy_libraries ROOTFS ELF: the shared objects ELF loads, the dynamic loader among them.
copy_libraries() {
  local rootfs=$1 elf=$2 out line lib
  if ! out=$(ldd "$elf" 2>&1); then
    # A static executable has nothing to copy.
    [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] && return 0
    die "ldd $elf: $out"
  fi
  while IFS= read -r line; do
    [[ "$line" == *"not found"* ]] && die "$elf needs a library this machine lacks: ${line//[[:space:]]/ }"
    [[ "$line" == *"statically linked"* ]] && continue
    if [[ "$line" =~ =\>[[:space:]]*(/[^[:space:]]+) ]]; then
      lib=${BASH_REMATCH[1]}
    elif [[ "$line" =~ ^[[:space:]]*(/[^[:space:]]+) ]]; then
      lib=${BASH_REMATCH[1]} # the dynamic loader
    else
      continue # linux-vdso.so.1: the kernel's
    fi
    copy_file "$rootfs" "$lib"
  done <<< "$out"
}

# stage NAME ROOTFS: the image's whole file tree.
stage() {
  local name=$1 rootfs=$2 bin top
  bin=$(image_binary "$name")
  mkdir -p "$rootfs"/{etc,tmp,usr/local/bin}
  chmod 0755 "$rootfs" "$rootfs"/etc "$rootfs"/usr "$rootfs"/usr/local "$rootfs"/usr/local/bin
  chmod 1777 "$rootfs/tmp"
  install -m 0755 "$(binary_path "$bin")" "$rootfs/usr/local/bin/$bin"
  # The host's merged-/usr library links (/lib -> usr/lib, ...), so that the loader's path in the ELF
  # headers (/lib64/ld-linux-x86-64.so.2) and the libraries' directories resolve as they do here.
  for top in lib lib32 lib64 libx32; do
    if [ -L "/$top" ]; then ln -sfn "$(readlink "/$top")" "$rootfs/$top"; fi
  done
  copy_libraries "$rootfs" "$rootfs/usr/local/bin/$bin"

  case $name in
    proxy | trellisd)
      # TLS origination to external services (the proxy) and https jwksUri fetches (trellisd)
      # verify against the system's roots when no CA is given.
      need /etc/ssl/certs/ca-certificates.crt ca-certificates
      copy_file "$rootfs" /etc/ssl/certs/ca-certificates.crt
      ;;
    proxy-init)
      # What trellis-proxy-init runs: nft when the kernel has nf_tables (almost everywhere),
      # else the iptables tools. Those are the legacy (x_tables) ones: the fallback only runs
      # where nf_tables does not work, and iptables-nft would fail there too.
      need /usr/sbin/nft nftables
      need /usr/sbin/xtables-legacy-multi iptables
      # iptables-restore -w takes its lock in /run (the template leaves this root writable).
      mkdir -p "$rootfs/usr/sbin" "$rootfs/run"
      install -m 0755 /usr/sbin/nft "$rootfs/usr/sbin/nft"
      install -m 0755 /usr/sbin/xtables-legacy-multi "$rootfs/usr/sbin/xtables-legacy-multi"
      for tool in iptables-restore iptables-save ip6tables-restore ip6tables-save; do
        ln -sfn xtables-legacy-multi "$rootfs/usr/sbin/$tool"
      done
      copy_libraries "$rootfs" "$rootfs/usr/sbin/nft"
      copy_libraries "$rootfs" "$rootfs/usr/sbin/xtables-legacy-multi"
      # The iptables extensions (-m owner, -j REDIRECT, ...) are loaded with dlopen, which ldd
      # cannot see: the whole directory, next to libxtables.
      local xtables
      xtables=$(ldd /usr/sbin/xtables-legacy-multi | sed -n 's/.*libxtables\.so[^ ]* => \([^ ]*\) .*/\1/p')
      xtables="$(dirname "$(realpath "$xtables")")/xtables"
      [ -d "$xtables" ] || die "no iptables extensions in $xtables"
      mkdir -p "$rootfs$xtables"
      local ext
      for ext in "$xtables"/*.so; do
        cp -L --preserve=mode "$ext" "$rootfs$xtables/"
        copy_libraries "$rootfs" "$ext"
      done
      ;;
  esac

  # Names for the users the images run as; "files" only for users and groups, DNS for hosts.
  cat > "$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
istio-proxy:x:1337:1337:istio-proxy:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
  cat > "$rootfs/etc/group" <<'EOF'
root:x:0:
istio-proxy:x:1337:
nonroot:x:65532:
nogroup:x:65534:
EOF
  cat > "$rootfs/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
  chmod 0644 "$rootfs"/etc/{passwd,group,nsswitch.conf}

  # Same binaries, same layer: every timestamp is the commit's (or SOURCE_DATE_EPOCH).
  if [ -n "${epoch:-}" ]; then
    find "$rootfs" -exec touch -h -d "@$epoch" {} +
  fi
}

epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || true)}

if [ -n "$stage_only" ]; then
  for name in "${images[@]}"; do
    rm -rf "${stage_only:?}/$name"
    stage "$name" "$stage_only/$name"
    echo "build-images: staged $stage_only/$name" >&2
  done
  exit 0
fi

# --- Layouts --------------------------------------------------------------------------------

command -v umoci >/dev/null || need /usr/bin/umoci umoci
epoch=${epoch:-$(date +%s)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD 2>/dev/null || true)
if [ -n "$revision" ] && ! git diff --quiet HEAD 2>/dev/null; then revision="$revision-dirty"; fi

# Not root: umoci maps this user to root in the layers (every file is root's either way).
rootless=()
[ "$(id -u)" = 0 ] || rootless=(--rootless)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$output"

for name in "${images[@]}"; do
  layout="$output/$name"
  # Only ever replace a layout (or an empty directory): --output may be mistyped.
  if [ -e "$layout" ]; then
    if [ -f "$layout/oci-layout" ] || [ -z "$(ls -A "$layout")" ]; then
      rm -rf "$layout"
    else
      die "$layout exists and is not an OCI image layout; not replacing it"
    fi
  fi
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  bundle="$work/$name"
  umoci unpack "${rootless[@]}" --image "$layout:$tag" "$bundle" >/dev/null
  stage "$name" "$bundle/rootfs"
  umoci repack --image "$layout:$tag" --history.created "$created" \
    --history.created_by "scripts/build-images.sh $name" "$bundle"

  config=(--config.user "$(image_user "$name")"
    --config.entrypoint "/usr/local/bin/$(image_binary "$name")"
    --config.env "PATH=$PATH_IN_IMAGE"
    --config.workingdir /
    --created "$created"
    --history.created "$created"
    --history.created_by "scripts/build-images.sh (config)"
    --config.label "org.opencontainers.image.title=trellis-$name"
    --config.label "org.opencontainers.image.description=$(image_description "$name")"
    --config.label "org.opencontainers.image.version=$version"
    --config.label "org.opencontainers.image.licenses=$license"
    --config.label "org.opencontainers.image.source=$repository"
    --config.label "dev.trellis.reference=$hub/$name:$tag"
    --config.label "dev.trellis.build=$(build_description)")
  [ -n "$revision" ] && config+=(--config.label "org.opencontainers.image.revision=$revision")
  for arg in $(image_cmd "$name"); do config+=(--config.cmd "$arg"); done
  for port in $(image_ports "$name"); do config+=(--config.exposedports "$port"); done
  umoci config --image "$layout:$tag" "${config[@]}"
  umoci gc --layout "$layout"
  echo "build-images: $layout:$tag  ($hub/$name:$tag)"
done

echo "build-images: push with e.g.  skopeo copy oci:$output/${images[0]}:$tag docker://$hub/${images[0]}:$tag" >&2
