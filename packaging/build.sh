#!/usr/bin/env bash
# Builds the .deb and .rpm packages of hashfleet-commander,
# hashfleet-sentry-host and hashfleet-sentry-asic into target/packages/.
#
#   packaging/build.sh [--version VERSION] [--out DIR]
#
#   --version VERSION  the package version (default: the workspace version);
#                      packaging/test.sh builds its upgrade this way
#   --out DIR          where the packages go (default: target/packages)
#
# The commander is built with the release profile, the sentries with
# [profile.agent]. What the packages need besides the binaries (maintainer
# scripts, man pages, completions, changelog) is rendered into
# packaging/stage/PACKAGE/ (git-ignored), where the [package.metadata.deb] and
# [package.metadata.generate-rpm] sections of each crate's Cargo.toml look
# for it. cargo-deb and cargo-generate-rpm are installed with
# `cargo install --locked` when missing. Needs: cargo, strip, gzip, and
# dpkg (cargo-deb reads the binaries' library dependencies through it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Versions known to build with the project's toolchain.
cargo_deb_version=3.8.0
cargo_generate_rpm_version=0.21.1

version=""
out="$root/target/packages"
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
crate_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
version="${version:-$crate_version}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
stage_root="$root/packaging/stage"

echo "== packaging tools"
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install --locked --version "$cargo_deb_version" cargo-deb
fi
if ! cargo generate-rpm --version >/dev/null 2>&1; then
  cargo install --locked --version "$cargo_generate_rpm_version" cargo-generate-rpm
fi
cargo deb --version
cargo generate-rpm --version

echo "== binaries (commander: release; sentries: profile agent)"
cargo build --locked --release -p hashfleet-commander
# One cargo run per sentry: built together, each would get the dependency
# features of the other (sentry-asic's TLS stack in sentry-host, for one).
cargo build --locked --profile agent -p hashfleet-sentry-host
cargo build --locked --profile agent -p hashfleet-sentry-asic

# render TEMPLATE DEST PACKAGE COMPONENT UNITS SERVICE: a maintainer script
# with packaging/scripts/common.sh in place of #HASHFLEET_COMMON#.
render() {
  local template=$1 dest=$2 package=$3 component=$4 units=$5 service=$6
  sed -e "/^#HASHFLEET_COMMON#\$/{
r packaging/scripts/common.sh
d
}" "$template" |
    sed -e "s|@PACKAGE@|$package|g" -e "s|@COMPONENT@|$component|g" \
      -e "s|@UNITS@|$units|g" -e "s|@SERVICE@|$service|g" >"$dest"
  chmod 0755 "$dest"
}

# stage PACKAGE COMPONENT PROFILE_DIR UNITS
stage() {
  local package=$1 component=$2 profile_dir=$3 units=$4
  local dir="$stage_root/$package" binary="$target_dir/$profile_dir/$1"
  rm -rf "$dir"
  mkdir -p "$dir"/{bin,docs,man,bash,zsh,deb,rpm}
  # The rpm's binary; cargo-deb strips its own copy the same way.
  strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    -o "$dir/bin/$package" "$binary"
  "$binary" gen-docs "$dir/docs"
  for page in "$dir"/docs/*.1; do
    gzip -9n -c "$page" >"$dir/man/$(basename "$page").gz"
  done
  cp "$dir/docs/$package.bash" "$dir/bash/$package"
  cp "$dir/docs/_$package" "$dir/zsh/_$package"
  sed -e "s|@PACKAGE@|$package|g" -e "s|@VERSION@|$version|g" packaging/changelog |
    gzip -9n >"$dir/changelog.gz"
  local t
  for t in postinst postrm; do
    render "packaging/scripts/deb/$t" "$dir/deb/$t" "$package" "$component" "$units" "$package.service"
  done
  for t in pre post preun postun; do
    render "packaging/scripts/rpm/$t" "$dir/rpm/$t" "$package" "$component" "$units" "$package.service"
  done
}

echo "== staging man pages, completions, scripts (packaging/stage/)"
stage hashfleet-commander commander release "hashfleet-commander.service"
stage hashfleet-sentry-host sentry-host agent "hashfleet-sentry-host.path hashfleet-sentry-host.service"
stage hashfleet-sentry-asic sentry-asic agent "hashfleet-sentry-asic.path hashfleet-sentry-asic.service"

echo "== packages $version into $out"
mkdir -p "$out"
rm -f "$out"/hashfleet-*.deb "$out"/hashfleet-*.rpm
for crate in commander sentry-host sentry-asic; do
  cargo deb --locked --no-build -p "hashfleet-$crate" --deb-version "$version" --output "$out/"
  cargo generate-rpm -p "$crate" -o "$out/" -s "version = \"$version\""
done
ls -l "$out"
