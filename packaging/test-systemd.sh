#!/usr/bin/env bash
# The units under a real systemd: boots a throwaway systemd container
# (systemd-nspawn, private network) over a tmpfs overlay of this machine's
# own root, installs the .debs from target/packages/ there and checks what
# the static test (packaging/test.sh) cannot:
#
#   - the commander starts and serves inside its sandbox;
#   - an unconfigured sentry is skipped (ExecCondition), not failed;
#   - saving the config starts it (the .path unit); it enrolls and reports;
#   - a bad config or an unsafe identity fails once (exit 64), no restarts,
#     and quick saves of a bad config do not stop the .path unit;
#   - a crash is restarted; an upgrade keeps the identities; purge stops all.
#
#   packaging/test-systemd.sh
#
# Needs root, a Debian-like host with systemd installed (not necessarily
# running) and overlayfs; installs systemd-container when missing. Nothing
# on the host changes: the container's writes go to a tmpfs that is
# unmounted at the end, and the container is powered off.
set -euo pipefail
# No `cmd | grep -q` here: grep -q quits at the first match, cmd may then die
# of SIGPIPE, and pipefail turns a match into a failure. `grep ... >/dev/null`.
cd "$(dirname "$0")/.."
root=$PWD
packages="$root/target/packages"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)

fail() { echo "FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root"
ls "$packages"/hashfleet-*_"${version}"_amd64.deb >/dev/null 2>&1 || fail "no .debs in $packages: run packaging/build.sh"
if ! ls "$packages"/upgrade/hashfleet-*_"${version}"+upgrade1_amd64.deb >/dev/null 2>&1; then
  bash packaging/build.sh --version "$version+upgrade1" --out "$packages/upgrade" >/dev/null
fi
if ! command -v systemd-nspawn >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-container >/dev/null
fi
[ -x /usr/lib/systemd/systemd ] || fail "systemd is not installed on this machine"

work=$(mktemp -d /var/tmp/hashfleet-systemd-test.XXXXXX)
nspawn_pid=""
leader=""
cleanup() {
  local status=$?
  if [ -n "$leader" ]; then nsenter -t "$leader" -a systemctl poweroff >/dev/null 2>&1 || true; fi
  if [ -n "$nspawn_pid" ]; then
    for _ in $(seq 1 30); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$nspawn_pid" 2>/dev/null; then kill -KILL "$nspawn_pid" 2>/dev/null || true; fi
    wait "$nspawn_pid" 2>/dev/null || true
  fi
  if mountpoint -q "$work/root"; then umount "$work/root" || umount -l "$work/root"; fi
  if mountpoint -q "$work/up"; then umount "$work/up" || umount -l "$work/up"; fi
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT

echo "== a throwaway systemd container over an overlay of /"
mkdir -p "$work/up" "$work/root"
mount -t tmpfs -o size=2G,mode=0700 tmpfs "$work/up"
mkdir -p "$work/up/upper" "$work/up/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/up/upper,workdir=$work/up/work" "$work/root"
rm -f "$work/root/usr/sbin/policy-rc.d" # the packages start their units in there
tr -d - </proc/sys/kernel/random/uuid >"$work/root/etc/machine-id"
mkdir -p "$work/root/root/hashfleet-test/upgrade"
cp "$packages"/hashfleet-*_"${version}"_amd64.deb "$work/root/root/hashfleet-test/"
cp "$packages"/upgrade/hashfleet-*_"${version}"+upgrade1_amd64.deb "$work/root/root/hashfleet-test/upgrade/"
cat >"$work/root/root/hashfleet-test/inner.sh" <<'INNER'
#!/usr/bin/env bash
# Runs inside the container, as its root.
set -euo pipefail
cd /root/hashfleet-test
passed=0
fail() { echo "FAIL: $*" >&2; journalctl --no-pager -n 40 -u 'hashfleet-*' >&2 || true; exit 1; }
ok() { passed=$((passed + 1)); echo "ok: $*"; }
prop() { systemctl show -p "$2" --value "$1"; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local secs=$1 what=$2
  shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  fail "$what (not within $secs s)"
}
is_state() { [ "$(prop "$1" ActiveState)" = "$2" ]; }
data=/var/lib/hashfleet/commander

dpkg -i ./hashfleet-*.deb >/dev/null
wait_for 30 "the commander serves" test -s "$data/http.addr"
is_state hashfleet-commander.service active || fail "the commander is $(prop hashfleet-commander.service ActiveState)"
for s in sentry-host sentry-asic; do
  wait_for 20 "hashfleet-$s.service skipped" test "$(prop hashfleet-$s.service Result)" = exec-condition
  is_state "hashfleet-$s.service" inactive || fail "hashfleet-$s.service is $(prop hashfleet-$s.service ActiveState)"
  is_state "hashfleet-$s.path" active || fail "hashfleet-$s.path is not watching"
  [ "$(prop hashfleet-$s.service NRestarts)" = 0 ] || fail "hashfleet-$s.service restarted"
done
ok "installed: the commander runs in its sandbox; the unconfigured sentries are skipped (not failed), their .path units wait"

key=$(hashfleet-commander info --data-dir "$data" --json | sed -n 's/.*"public_key":"\([0-9a-f]\{64\}\)".*/\1/p')
token=$(hashfleet-commander token create --data-dir "$data" --uses 5 --ttl-secs 3600 2>/dev/null)
[ -n "$key" ] && [ -n "$token" ] || fail "no commander key or enrollment token"
for s in sentry-host sentry-asic; do
  printf '\ninterval_secs = 2\n\n[[commander]]\naddr = "127.0.0.1:4433"\nkeys = ["%s"]\nenroll_token = "%s"\n' \
    "$key" "$token" >>"/etc/hashfleet/$s.toml"
done
for s in sentry-host sentry-asic; do
  wait_for 30 "hashfleet-$s starts once configured" is_state "hashfleet-$s.service" active
done
approved_with_heartbeats() {
  [ "$(hashfleet-commander sentry list --data-dir "$data" | awk '$2 == "approved" && $5 >= 2' | wc -l)" = 2 ]
}
wait_for 40 "both sentries approved, with heartbeats" approved_with_heartbeats
heartbeats() { hashfleet-commander sentry list --data-dir "$data" | awk '$2 == "approved" {n += $5} END {print n + 0}'; }
more_heartbeats_than() { [ "$(heartbeats)" -gt "$1" ]; }
ok "configured: the .path units started both sentries; both enrolled and report"

sed -i '1i bogus_key = 1' /etc/hashfleet/sentry-asic.toml
systemctl restart hashfleet-sentry-asic.service || true
wait_for 20 "a bad config fails the sentry" is_state hashfleet-sentry-asic.service failed
sleep 12 # more than two RestartSec=5s
is_state hashfleet-sentry-asic.service failed || fail "the sentry with a bad config is $(prop hashfleet-sentry-asic.service ActiveState)"
[ "$(prop hashfleet-sentry-asic.service ExecMainStatus)" = 64 ] || fail "exit status $(prop hashfleet-sentry-asic.service ExecMainStatus), not 64"
[ "$(prop hashfleet-sentry-asic.service NRestarts)" = 0 ] || fail "a bad config was restarted $(prop hashfleet-sentry-asic.service NRestarts) times"
journalctl --no-pager -u hashfleet-sentry-asic.service | grep bogus_key >/dev/null || fail "the journal does not name the bad key"
for i in $(seq 1 10); do
  echo "# saved again ($i)" >>/etc/hashfleet/sentry-asic.toml
  sleep 0.3
done
sleep 2
is_state hashfleet-sentry-asic.path active || fail "quick saves of a bad config stopped the .path unit: $(prop hashfleet-sentry-asic.path Result)"
[ "$(prop hashfleet-sentry-asic.service NRestarts)" = 0 ] || fail "a bad config was restarted automatically"
sed -i '/^bogus_key = 1$/d' /etc/hashfleet/sentry-asic.toml
wait_for 20 "saving the fixed config starts the sentry again" is_state hashfleet-sentry-asic.service active
ok "a bad config: fails with 64, no automatic restarts, the journal names the key, quick saves keep the .path unit watching; saving the fix starts it"

systemctl stop hashfleet-sentry-host.service 2>/dev/null
chmod 0644 /var/lib/hashfleet/sentry-host/identity.json
systemctl start hashfleet-sentry-host.service 2>/dev/null || true
wait_for 20 "an unsafe identity fails the sentry" is_state hashfleet-sentry-host.service failed
sleep 12
[ "$(prop hashfleet-sentry-host.service NRestarts)" = 0 ] || fail "an unsafe identity was restarted"
[ "$(prop hashfleet-sentry-host.service ExecMainStatus)" = 64 ] || fail "an unsafe identity exited $(prop hashfleet-sentry-host.service ExecMainStatus)"
chmod 0600 /var/lib/hashfleet/sentry-host/identity.json
systemctl start hashfleet-sentry-host.service
wait_for 20 "the sentry starts again" is_state hashfleet-sentry-host.service active
ok "a world-readable identity: failed once with 64, no restarts; chmod 600 and it starts"

pid=$(prop hashfleet-sentry-host.service MainPID)
kill -KILL "$pid"
restarted() { [ "$(prop hashfleet-sentry-host.service NRestarts)" = 1 ] && is_state hashfleet-sentry-host.service active; }
wait_for 30 "a crashed sentry restarts" restarted
ok "a crash (SIGKILL) is restarted (Restart=on-failure)"

sha256sum /var/lib/hashfleet/*/identity.json "$data/admin.token" >before
seen=$(heartbeats)
dpkg -i ./upgrade/hashfleet-*.deb >/dev/null
sha256sum /var/lib/hashfleet/*/identity.json "$data/admin.token" | diff before - || fail "the upgrade changed an identity or the token"
for u in hashfleet-commander hashfleet-sentry-host hashfleet-sentry-asic; do
  [ "$(dpkg-query -W -f '${Version}' "$u")" = "$(ls ./upgrade/"$u"_*.deb | sed 's/.*_\(.*\)_amd64.deb/\1/')" ] || fail "$u not upgraded"
  wait_for 30 "$u runs after the upgrade" is_state "$u.service" active
done
wait_for 40 "the sentries report after the upgrade" more_heartbeats_than $((seen + 4))
ok "upgraded while running: restarted on the new packages, identities and admin token unchanged"

if journalctl --no-pager -u 'hashfleet-*' | grep -iE 'operation not permitted|permission denied|read-only file system'; then
  fail "the sandbox denied something (above)"
fi
ok "the journal shows nothing the sandbox denied"
for u in hashfleet-commander hashfleet-sentry-host hashfleet-sentry-asic; do
  systemd-analyze security --no-pager "$u.service" | tail -1
done

dpkg -P hashfleet-commander hashfleet-sentry-host hashfleet-sentry-asic >/dev/null
if pgrep -f /usr/bin/hashfleet- >/dev/null; then fail "a Hashfleet process survived the purge"; fi
[ -z "$(systemctl list-units --all --plain --no-legend 'hashfleet-*')" ] || fail "units left after purge"
[ ! -e /var/lib/hashfleet ] && [ ! -e /etc/hashfleet ] || fail "purge left state or config"
ok "purged: services stopped, units, state and config gone"
echo "systemd: $passed passed, 0 failed"
INNER
chmod 0755 "$work/root/root/hashfleet-test/inner.sh"

systemd-nspawn --quiet --register=no --keep-unit --private-network --machine=hashfleet-test \
  --directory="$work/root" --console=passive --boot >"$work/nspawn.log" 2>&1 &
nspawn_pid=$!
for _ in $(seq 1 120); do
  leader=$(pgrep -P "$nspawn_pid" | head -1 || true)
  if [ -n "$leader" ] && nsenter -t "$leader" -a systemctl is-system-running 2>/dev/null | grep -E '^(running|degraded)$' >/dev/null; then
    break
  fi
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/nspawn.log"; fail "the container did not boot"; }
  leader=""
  sleep 0.5
done
[ -n "$leader" ] || { cat "$work/nspawn.log"; fail "the container did not boot within 60 s"; }
nsenter -t "$leader" -a systemctl --version | head -1
nsenter -t "$leader" -a /root/hashfleet-test/inner.sh
