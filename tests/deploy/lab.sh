#!/bin/bash
# Throw-away Debian 12 "head nodes" for testing the Ansible role, on one machine
# without Docker and without systemd as PID 1 (see shared/notes/ansible-test-hosts.md):
#   * one network namespace per head + one for the controller, joined by a bridge that
#     lives inside the controller namespace (the root namespace gets no test address,
#     only an "unreachable" route for the test subnet, so a forgotten "ip netns exec"
#     fails locally instead of leaving the machine)
#   * each head = overlay (shared read-only debootstrap base + own upper dir), booted
#     with systemd-nspawn, so systemd is PID 1 inside and the real unit runs
#   * $LAB/shared bind-mounted as /shared into every head (one kernel: inotify sees
#     other heads' writes, unlike NFS)
# The heads have no route to any package registry: the base already holds every
# Debian package the role installs (HEAD_PKGS), so the role's apt step finds them.
# usage: lab.sh base | up | down | status | restart headN | stop headN | start headN
set -euo pipefail
LAB=${LAB:-/var/tmp/hpcportal-lab}   # upper dirs need ext4/xfs/tmpfs, not an overlay
BASE=$LAB/base
SHARED=$LAB/shared
N=${N:-2}
NET=${NET:-10.211.0}              # heads get $NET.11 .. $NET.1N, controller $NET.1
P=${P:-hpl}                       # prefix for netns/links (link names max 15 chars)
# What a head needs to boot and be managed by Ansible (python3-apt for the apt module,
# python3-packaging for the pip module), plus what the hpcportal role installs.
BOOT_PKGS=systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,python3-packaging,iproute2,procps,sudo
ROLE_PKGS=${ROLE_PKGS:-python3-venv,libmagic1,squashfs-tools,sqlite3,nginx-light,slurmrestd,slurm-wlm-jwt-plugin}
# The lab's own little Slurm cluster (the test configures it, as a site's installer would):
# slurmctld and slurmd on head1, the client commands and munge on both.
CLUSTER_PKGS=${CLUSTER_PKGS:-munge,slurmctld,slurmd,slurm-client}
PKGS=$BOOT_PKGS,$ROLE_PKGS,$CLUSTER_PKGS

log() { printf '%s lab: %s\n' "$(date +%T)" "$*" >&2; }

mirror() {  # the Debian mirror apt already uses (first URI of the first source)
  local f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    grep -E '^(URIs:|deb )' "$f" | grep -oE 'https?://[^ ]+' | head -1 && return 0
  done
  return 1
}

base() {  # build the base root once; rebuilt when the package list changes
  if [ -f "$BASE/.ready" ] && [ "$(cat "$BASE/.ready")" = "$PKGS" ]; then
    log "base cached: $BASE"; return 0
  fi
  if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
    log "debootstrap/systemd-nspawn missing: run scripts/deploy-test-deps first"; exit 1
  fi
  if [ -d "$LAB/hosts" ] && ls "$LAB"/hosts/*/pid >/dev/null 2>&1; then
    log "heads are running on the old base: lab.sh down first"; exit 1
  fi
  mkdir -p "$LAB"
  rm -rf "$BASE.tmp"
  log "debootstrap from $(mirror) (about a minute)"
  debootstrap --variant=minbase --include="$PKGS" bookworm "$BASE.tmp" "$(mirror)" >"$LAB/debootstrap.log" 2>&1 \
    || { tail -20 "$LAB/debootstrap.log" >&2; exit 1; }
  local r=$BASE.tmp
  rm -f "$r"/etc/ssh/ssh_host_*                     # debootstrap made ONE set; each head gets its own
  : > "$r/etc/machine-id"; rm -f "$r/var/lib/dbus/machine-id"  # per-boot machine id
  : > "$r/etc/hostname"                            # nspawn sets it from --machine
  rm -f "$r"/etc/nginx/sites-enabled/default        # port 80 free for the proxy test's site
  mkdir -p "$r/shared" "$r/root/.ssh"; chmod 700 "$r/root/.ssh"
  [ -f "$LAB/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C hpcportal-lab -f "$LAB/id_ed25519"
  install -m600 "$LAB/id_ed25519.pub" "$r/root/.ssh/authorized_keys"
  printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
  apt-get -o Dir="$r" clean >/dev/null 2>&1 || rm -rf "$r"/var/cache/apt/archives/*.deb
  printf '%s' "$PKGS" > "$r/.ready"
  rm -rf "$BASE"; mv "$r" "$BASE"
  log "base ready ($(du -sh "$BASE" | cut -f1))"
}

start_host() {  # boot head $1 (its upper dir is kept, so stop + start is a reboot)
  local h=$1 d=$LAB/hosts/$1
  mkdir -p "$d/upper" "$d/work" "$d/merged"
  # private mount ns: the overlay lives as long as the nspawn process, nothing leaks
  HOSTS="$(cat "$LAB/hosts.txt")" h=$h d=$d BASE=$BASE SHARED=$SHARED NS=/run/netns/$P-$h \
  setsid unshare --mount --propagation private bash -c '
    set -e
    mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$d/upper,workdir=$d/work" "$d/merged"
    [ -f "$d/merged/etc/ssh/ssh_host_ed25519_key" ] || chroot "$d/merged" ssh-keygen -A >/dev/null
    printf "%s\n" "$HOSTS" > "$d/merged/etc/hosts"
    exec systemd-nspawn --quiet --boot --directory="$d/merged" --machine="$h" \
      --register=no --keep-unit --network-namespace-path="$NS" \
      --bind="$SHARED:/shared" --console=passive
  ' </dev/null >>"$d/console.log" 2>&1 &
  echo $! > "$d/pid"
}

stop_host() {  # SIGTERM = clean poweroff of the container; SIGKILL after 10 s
  local h pids=() pid
  for h in "$@"; do
    [ -f "$LAB/hosts/$h/pid" ] || continue
    pid=$(cat "$LAB/hosts/$h/pid"); pids+=("$pid"); rm -f "$LAB/hosts/$h/pid"
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

wait_ssh() {  # wait until sshd of head $1 accepts TCP, 60 s max
  local ip=$NET.1${1#head}
  for _ in $(seq 300); do
    ip netns exec "$P-ctl" bash -c "exec 3<>/dev/tcp/$ip/22" 2>/dev/null && return 0
    sleep 0.2
  done
  log "$1: sshd did not come up"; tail -50 "$LAB/hosts/$1/console.log" >&2; return 1
}

start() { start_host "$1"; wait_ssh "$1"; }
stop() { stop_host "$1"; }
restart() { stop_host "$1"; start_host "$1"; wait_ssh "$1"; }

up() {
  base
  down 2>/dev/null || true
  rm -rf "$SHARED"; mkdir -p "$SHARED" "$LAB/hosts"   # /shared starts empty every run
  ip route replace unreachable "$NET.0/24"
  ip netns add "$P-ctl"
  ip -n "$P-ctl" link set lo up
  ip -n "$P-ctl" link add br0 type bridge
  ip -n "$P-ctl" addr add "$NET.1/24" dev br0
  ip -n "$P-ctl" link set br0 up
  local hosts="127.0.0.1 localhost"$'\n' inv="[heads]"$'\n' i h
  for i in $(seq 1 "$N"); do hosts+="$NET.1$i head$i"$'\n'; done
  printf "%s" "$hosts" > "$LAB/hosts.txt"
  for i in $(seq 1 "$N"); do
    h=head$i
    ip netns add "$P-$h"
    ip -n "$P-$h" link set lo up
    ip link add "$P-$h" netns "$P-ctl" type veth peer name host0 netns "$P-$h"
    ip -n "$P-ctl" link set "$P-$h" master br0 up
    ip -n "$P-$h" addr add "$NET.1$i/24" dev host0
    ip -n "$P-$h" link set host0 up
    start_host "$h"
    inv+="$h ansible_host=$NET.1$i"$'\n'
  done
  printf '%s\n[heads:vars]\nansible_user=root\nansible_ssh_private_key_file=%s\n' \
    "$inv" "$LAB/id_ed25519" > "$LAB/inventory.ini"
  for i in $(seq 1 "$N"); do wait_ssh "head$i"; done
  log "up: $N heads, inventory $LAB/inventory.ini; run ansible with: ip netns exec $P-ctl ..."
}

down() {
  local d n heads=()
  for d in "$LAB"/hosts/*/; do if [ -d "$d" ]; then heads+=("$(basename "$d")"); fi; done
  stop_host "${heads[@]}"
  for n in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$n"; done
  ip route del unreachable "$NET.0/24" 2>/dev/null || true
  rm -rf "$LAB/hosts" "$LAB/hosts.txt"
}

status() {
  ip netns list | grep "^$P-" || true
  for f in "$LAB"/hosts/*/pid; do if [ -f "$f" ]; then echo "$f: $(cat "$f")"; fi; done
}

"${1:?usage: lab.sh base|up|down|status|restart|stop|start HEAD}" "${@:2}"
