#!/usr/bin/env bash
# The packaging test: checks the packages packaging/build.sh made in
# target/packages/, then installs, upgrades, removes and purges the three
# .debs on this machine. .ci/run runs it right after build.sh.
#
#   packaging/test.sh
#
# Needs root on a Debian-like machine with apt-get (installs lintian, rpm
# and systemd-analyze when missing). It refuses to run when a Hashfleet
# package, /var/lib/hashfleet or /etc/hashfleet is already there, and
# purges everything it installed when it ends, failed or not. No service is
# started: a policy-rc.d (its own, unless one is there) keeps the packages'
# scripts from starting units where systemd runs, and the only process it
# starts (a commander, to make real state for the upgrade check) it stops
# itself.
set -euo pipefail
# No `cmd | grep -q` here: grep -q quits at the first match, cmd may then die
# of SIGPIPE, and pipefail turns a match into a failure. `grep ... >/dev/null`.
cd "$(dirname "$0")/.."
root=$PWD
packages="$root/target/packages"
packages_list=(hashfleet-commander hashfleet-sentry-host hashfleet-sentry-asic)

step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
checks=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root: the test installs the packages"
command -v dpkg >/dev/null && command -v apt-get >/dev/null || fail "needs a Debian-like machine (dpkg, apt-get)"

step "tools"
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v rpm >/dev/null || missing+=(rpm)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
lintian --version
rpm --version
systemd-analyze --version | head -1

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
deb() { echo "$packages/${1}_${2:-$version}_amd64.deb"; }
rpmfile() { echo "$packages/$1-$version-1.x86_64.rpm"; }
for p in "${packages_list[@]}"; do
  [ -f "$(deb "$p")" ] || fail "$(deb "$p") is missing: run packaging/build.sh first"
  [ -f "$(rpmfile "$p")" ] || fail "$(rpmfile "$p") is missing: run packaging/build.sh first"
done

tmp=$(mktemp -d)
chmod 0755 "$tmp" # the service user reads test configs here
commander_pid=""
policy_ours=no
installing=no
cleanup() {
  local status=$?
  if [ -n "$commander_pid" ] && kill -0 "$commander_pid" 2>/dev/null; then
    kill -TERM "$commander_pid" 2>/dev/null || true
    wait "$commander_pid" 2>/dev/null || true
  fi
  # Only what this test installed: never a package that was here before.
  if [ "$installing" = yes ]; then
    dpkg -P "${packages_list[@]}" >/dev/null 2>&1 || true
  fi
  if [ "$policy_ours" = yes ]; then rm -f /usr/sbin/policy-rc.d; fi
  rm -rf "$tmp"
  exit $status
}
trap cleanup EXIT

step "lintian (errors fail; every warning must be explained in packaging/README.md)"
lintian --fail-on error --display-info --pedantic "$packages"/*.deb 2>&1 | tee "$tmp/lintian.txt" |
  grep -v '^running with root privileges' || true
if grep -q '^E: ' "$tmp/lintian.txt"; then fail "lintian reports errors"; fi
for tag in $(awk '/^W: /{print $3}' "$tmp/lintian.txt" | sort -u); do
  grep -q -- "$tag" packaging/README.md || fail "lintian warning $tag is not explained in packaging/README.md"
done
ok "lintian: no errors, $(grep -c '^W: ' "$tmp/lintian.txt" || true) warnings, all explained"

step "the .rpm carries the same files and scripts as the .deb"
common_block() { sed -n '/^# >>> hashfleet common/,/^# <<< hashfleet common/p' "$1"; }
for p in "${packages_list[@]}"; do
  d="$tmp/deb-$p"
  mkdir -p "$d"
  dpkg-deb -e "$(deb "$p")" "$d"
  # Files (directories aside); zsh completions go where each distribution's zsh looks.
  dpkg-deb -c "$(deb "$p")" | awk '$1 !~ /^d/ {print substr($6, 2)}' |
    sed 's|^/usr/share/zsh/vendor-completions/|/usr/share/zsh/site-functions/|' | sort >"$d/files.deb"
  rpm -qpl "$(rpmfile "$p")" 2>/dev/null | sort >"$d/files.rpm"
  diff -u "$d/files.deb" "$d/files.rpm" || fail "$p: the .deb and the .rpm hold different files"
  diff -u "$d/conffiles" <(rpm -qpc "$(rpmfile "$p")" 2>/dev/null) ||
    fail "$p: the .deb's conffiles are not the .rpm's config files"
  # The scripts: the same common block (user, directories) in postinst,
  # %pre and %post; the same calls on install and upgrade.
  rpm -qp --scripts "$(rpmfile "$p")" 2>/dev/null >"$d/rpm-scripts"
  for s in preinstall postinstall preuninstall postuninstall; do
    grep -q "^$s scriptlet (using /bin/sh):" "$d/rpm-scripts" || fail "$p: the .rpm has no $s scriptlet"
  done
  awk '/^preinstall scriptlet/{f=1;next} /^[a-z]+ scriptlet/{f=0} f' "$d/rpm-scripts" >"$d/rpm-pre"
  awk '/^postinstall scriptlet/{f=1;next} /^[a-z]+ scriptlet/{f=0} f' "$d/rpm-scripts" >"$d/rpm-post"
  common_block "$d/postinst" >"$d/common.deb"
  [ -s "$d/common.deb" ] || fail "$p: the .deb's postinst lacks the common block"
  for s in rpm-pre rpm-post; do
    common_block "$d/$s" | diff -u "$d/common.deb" - || fail "$p: $s differs from the .deb's common block"
  done
  grep -qx '        hf_user' "$d/postinst" && grep -qx '        hf_dirs' "$d/postinst" ||
    fail "$p: the .deb's postinst does not create the user and directories"
  grep -qx 'hf_user' "$d/rpm-pre" && grep -qx 'hf_user' "$d/rpm-post" && grep -qx 'hf_dirs' "$d/rpm-post" ||
    fail "$p: the .rpm's %pre/%post do not create the user and directories"
  if grep -q 'hf_purge\|rm -rf' "$d/rpm-scripts"; then fail "$p: an .rpm script removes state"; fi
  ok "$p: $(wc -l <"$d/files.deb") files and the scripts match ($(rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}' "$(rpmfile "$p")" 2>/dev/null))"
done

step "a clean machine"
if dpkg-query -W -f '${Package} ${db:Status-Status}\n' 'hashfleet-*' 2>/dev/null | grep -v ' not-installed$' >/dev/null; then
  fail "a Hashfleet package is installed already; purge it first"
fi
for path in /var/lib/hashfleet /etc/hashfleet; do
  [ ! -e "$path" ] || fail "$path exists already: this test would install over it; move it away first"
done
user_existed=no
if getent passwd hashfleet >/dev/null; then user_existed=yes; fi
# Keep the packages' scripts from starting units on a machine that runs
# systemd (a policy-rc.d already there is left as it is).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  policy_ours=yes
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
fi
ok "no Hashfleet package, state or config here"

# The upgrade: the same code under a higher version.
step "the upgrade build ($version+upgrade1)"
bash packaging/build.sh --version "$version+upgrade1" --out "$packages/upgrade" >"$tmp/upgrade-build.log" 2>&1 ||
  { cat "$tmp/upgrade-build.log"; fail "building the upgrade"; }
ok "built $(ls "$packages/upgrade"/*.deb | wc -l) upgrade .debs"

debs=()
for p in "${packages_list[@]}"; do debs+=("$(deb "$p")"); done

mode_of() { stat -c '%a %U:%G' "$1"; }
expect_mode() {
  local got
  got=$(mode_of "$1")
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
}
# Runs a command as the services do: user hashfleet, umask 0077, a clean environment.
as_service() {
  setpriv --reuid=hashfleet --regid=hashfleet --init-groups -- \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c 'umask 0077; exec "$@"' sh "$@"
}
# unit_line UNIT KEY: the value of KEY= in an installed unit.
unit_line() { sed -n "s/^$2=//p" "/usr/lib/systemd/system/$1"; }
# unit_cmd UNIT KEY: that command line without systemd's "-" prefix.
unit_cmd() { unit_line "$1" "$2" | sed 's/^-//'; }

step "install: dpkg -i"
installing=yes
dpkg -i "${debs[@]}" </dev/null
for p in "${packages_list[@]}"; do
  [ "$(dpkg-query -W -f '${db:Status-Status}' "$p")" = installed ] || fail "$p is not installed"
done
entry=$(getent passwd hashfleet) || fail "no user hashfleet"
IFS=: read -r _ _ uid gid _ home shell <<<"$entry"
[ "$uid" -lt 1000 ] || fail "hashfleet has uid $uid, not a system uid"
[ "$home" = /var/lib/hashfleet ] && [ "$shell" = /usr/sbin/nologin ] || fail "hashfleet: home $home, shell $shell"
[ "$(getent group hashfleet | cut -d: -f3)" = "$gid" ] || fail "hashfleet's group is not hashfleet"
ok "system user hashfleet (uid $uid), home /var/lib/hashfleet, no login shell"
expect_mode /var/lib/hashfleet "755 root:root"
expect_mode /etc/hashfleet "755 root:root"
for c in commander sentry-host sentry-asic; do
  expect_mode "/var/lib/hashfleet/$c" "700 hashfleet:hashfleet"
  expect_mode "/etc/hashfleet/$c.toml" "640 root:hashfleet"
done
ok "state directories 0700 hashfleet, configs 0640 root:hashfleet"
for p in "${packages_list[@]}"; do
  out=$("/usr/bin/$p" --version)
  [ "$out" = "$p $version" ] || fail "$p --version printed '$out'"
  for unit in "$p.service" "$p.path"; do
    [ -f "/usr/lib/systemd/system/$unit" ] || continue
    [ -L "/etc/systemd/system/multi-user.target.wants/$unit" ] || fail "$unit is not enabled"
  done
  gzip -t "/usr/share/man/man1/$p.1.gz" || fail "$p.1.gz"
  bash -n "/usr/share/bash-completion/completions/$p" || fail "$p's bash completion"
  [ -s "/usr/share/zsh/vendor-completions/_$p" ] || fail "$p's zsh completion"
  if command -v zsh >/dev/null; then zsh -n "/usr/share/zsh/vendor-completions/_$p" || fail "$p's zsh completion"; fi
  if command -v man >/dev/null; then
    man -l "/usr/share/man/man1/$p.1.gz" 2>&1 >/dev/null | grep . && fail "man reports problems in $p.1"
  fi
  echo "  $out"
done
ok "binaries print --version; units enabled; man pages and completions in place"

step "systemd-analyze verify"
systemd-analyze verify /usr/lib/systemd/system/hashfleet-*.service /usr/lib/systemd/system/hashfleet-*.path
ok "systemd-analyze verify accepts $(ls /usr/lib/systemd/system/hashfleet-* | wc -l) units"
for p in "${packages_list[@]}"; do
  u="$p.service"
  [ "$(unit_line "$u" User)" = hashfleet ] && [ "$(unit_line "$u" Group)" = hashfleet ] || fail "$u: User/Group"
  [ "$(unit_line "$u" StateDirectoryMode)" = 0700 ] || fail "$u: StateDirectoryMode"
  [ "$(unit_line "$u" Restart)" = on-failure ] || fail "$u: Restart"
  [ "$(unit_line "$u" RestartPreventExitStatus)" = 64 ] || fail "$u: RestartPreventExitStatus"
  for k in NoNewPrivileges ProtectHome PrivateTmp; do
    [ "$(unit_line "$u" $k)" = yes ] || fail "$u: $k"
  done
  [ "$(unit_line "$u" ProtectSystem)" = strict ] || fail "$u: ProtectSystem"
  unit_line "$u" ExecStartPre | grep "^-/usr/bin/$p validate " >/dev/null || fail "$u: ExecStartPre is not validate"
done
ok "units: user hashfleet, state 0700, Restart=on-failure, no restart on exit 64, sandboxed, validate first"
for p in "${packages_list[@]}"; do
  # The main process must exit 64 on what validate refuses: that status,
  # not validate's, is what stops the restarts.
  cmd=$(unit_cmd "$p.service" ExecStart)
  cp "/etc/hashfleet/${p#hashfleet-}.toml" "$tmp/bad.toml"
  echo 'no_such_key = 1' >>"$tmp/bad.toml"
  chmod 0644 "$tmp/bad.toml"
  # shellcheck disable=SC2086
  set +e; as_service ${cmd/\/etc\/hashfleet\/${p#hashfleet-}.toml/$tmp/bad.toml} 2>"$tmp/bad.err"; status=$?; set -e
  [ "$status" = 64 ] || fail "$p: ExecStart with a bad config exited $status, not 64: $(cat "$tmp/bad.err")"
  grep -q no_such_key "$tmp/bad.err" || fail "$p: the error does not name the bad key: $(cat "$tmp/bad.err")"
done
ok "ExecStart exits 64 (no restart) on a bad config, naming the problem"

step "the units' own checks, run as the service user"
pre=$(unit_cmd hashfleet-commander.service ExecStartPre)
# shellcheck disable=SC2086 # the unit's command line, split as systemd does (no quotes in it)
as_service $pre || fail "the commander's default config does not validate: $pre"
ok "commander: ExecStartPre ($pre) passes on the default config"
for c in sentry-host sentry-asic; do
  u="hashfleet-$c.service"
  cond=$(unit_line "$u" ExecCondition)
  [ -n "$cond" ] || fail "$u has no ExecCondition"
  [ "$(unit_line "hashfleet-$c.path" PathChanged)" = "/etc/hashfleet/$c.toml" ] || fail "hashfleet-$c.path watches the wrong file"
  [ "$(unit_line "$u" StartLimitIntervalSec)" = 0 ] || fail "$u has a start limit, which would stop its .path unit"
  # shellcheck disable=SC2086
  if as_service $cond 2>"$tmp/cond.err"; then fail "$u: ExecCondition passes with no commander configured"; fi
  grep -q "no \[\[commander\]\]" "$tmp/cond.err" || fail "$u: ExecCondition says: $(cat "$tmp/cond.err")"
  # shellcheck disable=SC2086
  if as_service $(unit_cmd "$u" ExecStartPre) 2>"$tmp/pre.err"; then fail "$u: validate passes with no commander"; fi
  grep -q "no commander configured" "$tmp/pre.err" || fail "$u: validate says: $(cat "$tmp/pre.err")"
done
ok "sentries: without a commander, ExecCondition skips the start (exit 1) and validate names the fix"

step "first start of the commander (as the unit runs it; loopback, free ports)"
setpriv --reuid=hashfleet --regid=hashfleet --init-groups -- \
  env -i PATH=/usr/bin:/bin HASHFLEET_QUIC_LISTEN=127.0.0.1:0 HASHFLEET_HTTP_LISTEN=127.0.0.1:0 \
  /usr/bin/hashfleet-commander serve --config /etc/hashfleet/commander.toml 2>"$tmp/commander.log" &
commander_pid=$!
data=/var/lib/hashfleet/commander
for _ in $(seq 1 300); do
  [ -f "$data/http.addr" ] && [ -f "$data/admin.token" ] && break
  kill -0 "$commander_pid" 2>/dev/null || { cat "$tmp/commander.log"; fail "the commander exited"; }
  sleep 0.1
done
[ -f "$data/http.addr" ] || { cat "$tmp/commander.log"; fail "the commander did not start within 30 s"; }
key=$(hashfleet-commander info --data-dir "$data" --json | sed -n 's/.*"public_key":"\([0-9a-f]\{64\}\)".*/\1/p')
[ -n "$key" ] || fail "no public key from hashfleet-commander info"
token=$(hashfleet-commander token create --data-dir "$data" --uses 10 --ttl-secs 86400 2>/dev/null)
[ -n "$token" ] || fail "no enrollment token from hashfleet-commander token create"
kill -TERM "$commander_pid"
wait "$commander_pid" || fail "the commander did not stop cleanly on SIGTERM"
commander_pid=""
expect_mode "$data/identity.json" "600 hashfleet:hashfleet"
expect_mode "$data/admin.token" "600 hashfleet:hashfleet"
ok "the commander made its identity and admin token (0600 hashfleet), served, and stopped on SIGTERM"

step "configure the sentries (key and enrollment token)"
for c in sentry-host sentry-asic; do
  cat >>"/etc/hashfleet/$c.toml" <<EOF

[[commander]]
addr = "127.0.0.1:4433"
keys = ["$key"]
enroll_token = "$token"
EOF
  u="hashfleet-$c.service"
  # shellcheck disable=SC2086
  as_service $(unit_line "$u" ExecCondition) || fail "$u: ExecCondition fails with a commander configured"
  # shellcheck disable=SC2086
  as_service $(unit_cmd "$u" ExecStartPre) || fail "$u: validate fails on the configured file"
  as_service "hashfleet-$c" identity init --home "/var/lib/hashfleet/$c" >/dev/null
  expect_mode "/var/lib/hashfleet/$c/identity.json" "600 hashfleet:hashfleet"
done
ok "configured sentries pass ExecCondition and validate; identities made (0600 hashfleet)"

step "every documented setting in the default configs validates (uncommented)"
mkdir -p "$tmp/cfg/tls"
chmod 0755 "$tmp/cfg" "$tmp/cfg/tls"
printf 'cert\n' >"$tmp/cfg/tls/cert.pem"
printf 'key\n' >"$tmp/cfg/tls/key.pem"
chown hashfleet:hashfleet "$tmp/cfg/tls/cert.pem" "$tmp/cfg/tls/key.pem"
chmod 0600 "$tmp/cfg/tls/key.pem"
for c in commander sentry-host sentry-asic; do
  sed -E -e 's/^#([^ #!])/\1/' -e "s|/etc/hashfleet/tls/|$tmp/cfg/tls/|" \
    -e "s/COMMANDER_PUBLIC_KEY/$key/" -e "s/ENROLLMENT_TOKEN/$token/" \
    "$root/packaging/config/$c.toml" >"$tmp/cfg/$c.toml"
  chmod 0644 "$tmp/cfg/$c.toml"
  as_service "hashfleet-$c" validate --config "$tmp/cfg/$c.toml" >/dev/null ||
    fail "packaging/config/$c.toml with every setting uncommented does not validate"
done
ok "all three default configs validate with every commented setting turned on"

step "upgrade to $version+upgrade1: identities, tokens, store and edited configs stay byte for byte"
snapshot() {
  (cd /var/lib/hashfleet && find . -type f -print0 | sort -z | xargs -0 sha256sum)
  (cd /var/lib/hashfleet && find . -printf '%p %m %u:%g\n' | sort)
  sha256sum /etc/hashfleet/*.toml
  stat -c '%n %a %U:%G' /etc/hashfleet/*.toml
}
snapshot >"$tmp/before"
grep -q 'identity.json' "$tmp/before" && grep -q 'admin.token' "$tmp/before" && grep -q '/store/' "$tmp/before" ||
  fail "the snapshot misses the state it should compare"
upgrade_debs=()
for p in "${packages_list[@]}"; do upgrade_debs+=("$(deb "$p" "$version+upgrade1" | sed "s|$packages/|$packages/upgrade/|")"); done
dpkg -i "${upgrade_debs[@]}" </dev/null
for p in "${packages_list[@]}"; do
  [ "$(dpkg-query -W -f '${Version}' "$p")" = "$version+upgrade1" ] || fail "$p was not upgraded"
done
snapshot >"$tmp/after"
diff -u "$tmp/before" "$tmp/after" || fail "the upgrade changed the state or the configs"
ok "upgraded; $(grep -c ' ./' "$tmp/before" | head -1) state files and the edited configs unchanged (sha256, modes, owners)"

step "remove: state and configs stay"
dpkg -r "${packages_list[@]}" </dev/null
[ ! -e /usr/bin/hashfleet-commander ] || fail "remove left the binary"
[ ! -e /usr/lib/systemd/system/hashfleet-commander.service ] || fail "remove left the unit"
snapshot >"$tmp/removed"
diff -u "$tmp/before" "$tmp/removed" || fail "remove changed the state or the configs"
getent passwd hashfleet >/dev/null || fail "remove deleted the user"
ok "removed; state, configs and user kept"

step "reinstall after remove: the same identities"
dpkg -i "${debs[@]}" </dev/null
snapshot >"$tmp/reinstalled"
diff -u "$tmp/before" "$tmp/reinstalled" || fail "reinstalling changed the state or the configs"
ok "reinstalled over the kept state; nothing changed"

step "purge: dpkg -P"
dpkg -P "${packages_list[@]}" </dev/null
for path in /var/lib/hashfleet /etc/hashfleet /usr/bin/hashfleet-commander /usr/share/doc/hashfleet-commander; do
  [ ! -e "$path" ] || fail "purge left $path"
done
if ls /etc/systemd/system/*/hashfleet-* >/dev/null 2>&1; then fail "purge left unit links: $(ls /etc/systemd/system/*/hashfleet-*)"; fi
if [ "$user_existed" = no ]; then
  if getent passwd hashfleet >/dev/null || getent group hashfleet >/dev/null; then
    fail "purge of the last Hashfleet package left the user or group hashfleet"
  fi
fi
if dpkg-query -W -f '${Package} ${db:Status-Status}\n' 'hashfleet-*' 2>/dev/null | grep -v ' not-installed$' >/dev/null; then
  fail "dpkg still knows a Hashfleet package"
fi
ok "purged: no state, config, unit link, user or package left"

echo "packaging: $checks passed, 0 failed"
