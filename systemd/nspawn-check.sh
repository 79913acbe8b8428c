#!/usr/bin/env bash
# The shipped units under a real systemd: boots systemd as PID 1 in a systemd-nspawn
# container (the host's /usr, a scratch /etc and /var), installs collector into
# /opt/collector/.venv as docs/deploy.md says, enables the four units unchanged and runs
# systemd/nspawn_probe.py against them. Needs root, systemd-container and PyPI (for pip).
# Not part of `make test`: it takes about a minute. Usage: systemd/nspawn-check.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(dirname "$here")"
work="$(mktemp -d /tmp/collector-nspawn.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
nspawn=(systemd-nspawn --quiet --register=no --keep-unit -D "$root" --bind-ro=/usr)

mkdir -p "$root"/{usr,var,tmp,run,proc,sys,dev,root,home,opt,src,results}
for d in bin lib lib64 sbin; do [ -L "/$d" ] && ln -s "usr/$d" "$root/$d"; done
cp -a /etc "$root/etc"
cp --remove-destination /usr/lib/os-release "$root/etc/os-release"
: > "$root/etc/machine-id"
tar -C "$src" --exclude=.venv --exclude=.git --exclude='*.egg-info' --exclude='.*_cache' \
    -cf - . | tar -C "$root/src" -xf -

"${nspawn[@]}" /bin/sh -c '/usr/bin/python3 -m venv /opt/collector/.venv &&
    /opt/collector/.venv/bin/pip install --quiet /src' >/dev/null

units="$root/etc/systemd/system"
rm -rf "$units"/*.wants "$units"/*.requires
mkdir -p "$units/multi-user.target.wants" "$units/sockets.target.wants" "$units/collector.service.d"
cp "$here"/collector.service "$here"/collector*.socket "$units/"
install -d -m 0755 "$root/etc/collector"
cp "$here/collector.toml" "$root/etc/collector/collector.toml"
head -c 24 /dev/urandom | base64 > "$root/etc/collector/query-token"
chmod 0600 "$root/etc/collector/query-token"
cat > "$units/collector.service.d/check.conf" <<'UNIT'
[Service]
WatchdogSec=4s
LoadCredential=query-token:/etc/collector/query-token
Environment=COLLECTOR_QUERY_TOKEN_FILE=%d/query-token
UNIT
cat > "$units/probe.service" <<'UNIT'
[Unit]
After=collector.service
Wants=collector.service
[Service]
Type=oneshot
ExecStart=/opt/collector/.venv/bin/python /src/systemd/nspawn_probe.py
ExecStopPost=/bin/systemctl poweroff --no-block
StandardOutput=file:/results/probe.out
StandardError=file:/results/probe.out
UNIT
ln -s ../collector.service "$units/multi-user.target.wants/collector.service"
ln -s ../probe.service "$units/multi-user.target.wants/probe.service"
for s in collector.socket collector-tcp.socket collector-query.socket; do
    ln -s "../$s" "$units/sockets.target.wants/$s"
done

timeout 300 "${nspawn[@]}" --bind="$root/results:/results" --boot </dev/null >"$work/boot.log" 2>&1 || true
cat "$root/results/probe.out" 2>/dev/null || { tail -50 "$work/boot.log"; exit 1; }
grep -q '^ALL CHECKS PASSED$' "$root/results/probe.out"
