#!/usr/bin/env bash
# A two-node Slurm cluster on this one machine, for hpcray's tests (run as root).
#
#   slurm/testing/cluster.sh install   apt-get install slurm-wlm munge (Debian 12: Slurm 22.05)
#   slurm/testing/cluster.sh start     write the configuration, start munged, slurmctld, 2 slurmd
#   slurm/testing/cluster.sh check     wait until `sinfo` shows both nodes idle (exit 1 if not)
#   slurm/testing/cluster.sh stop      stop every daemon this script started
#   slurm/testing/cluster.sh env       print `export SLURM_CONF=...` for your shell
#   slurm/testing/cluster.sh up        install (if missing) + start + check
#   slurm/testing/cluster.sh restart   stop + start (after editing this script's configuration)
#
# Every command is idempotent. Nothing is written outside $HPCRAY_SLURM_DIR (default
# /tmp/hpcray-slurm) except munge's own key and socket (/etc/munge, /run/munge), which munge
# needs at fixed places. Nodes n1 and n2 are two slurmd processes on 127.0.0.1 (ports 17001 and
# 17002), slurmctld listens on 17000; each node has 4 CPUs (on however many cores the machine has) and 2 fake GPUs (gres without device
# files: Slurm schedules and reports them, nothing can run on them).
# Clients (sinfo, srun, sbatch) find the cluster through SLURM_CONF=$HPCRAY_SLURM_DIR/slurm.conf.
set -euo pipefail

DIR="${HPCRAY_SLURM_DIR:-/tmp/hpcray-slurm}"
CONF="$DIR/slurm.conf"
NODES=(n1 n2)
PORTS=(17001 17002)
export SLURM_CONF="$CONF"

log() { echo "cluster.sh: $*" >&2; }

need_root() {
    if [[ "$(id -u)" != 0 ]]; then
        log "must run as root (slurmd runs jobs as their users; munged needs /etc/munge)"
        exit 2
    fi
}

cmd_install() {
    need_root
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        log "slurm-wlm and munge are already installed ($(slurmd -V))"
        return
    fi
    log "installing slurm-wlm and munge from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    mkdir -p "$DIR/state" "$DIR/log" "$DIR/run"
    local host
    host="$(hostname)"
    cat >"$CONF.new" <<EOF
# Written by slurm/testing/cluster.sh: two virtual nodes on one machine.
ClusterName=hpcray-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=17000
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmdSpoolDir=$DIR/spool-%n
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in containers: track processes by parentage, no binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# jobs must ask for an MPI plugin (srun --mpi=pmi2), as on most sites
MpiDefault=none
ReturnToService=2
# requeue only jobs submitted with --requeue
JobRequeue=0
# trust the node lines below, not the hardware (the two nodes share this machine's cores)
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=300
# start pending jobs (e.g. requeued ones whose begin time passed) within a second or two
SchedulerParameters=sched_interval=2,bf_interval=1
GresTypes=gpu
NodeName=${NODES[0]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[0]} CPUs=4 RealMemory=8000 Gres=gpu:2 State=UNKNOWN
NodeName=${NODES[1]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[1]} CPUs=4 RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    # fake GPUs: Slurm drops GPUs without a device file, so give it character devices that
    # behave like /dev/null (major 1, minor 3)
    mkdir -p "$DIR/dev"
    local g
    for g in 0 1; do
        if [[ ! -c "$DIR/dev/gpu$g" ]]; then
            rm -f "$DIR/dev/gpu$g"
            # without CAP_MKNOD a plain file still counts (slurmd logs a complaint)
            mknod "$DIR/dev/gpu$g" c 1 3 2>/dev/null || touch "$DIR/dev/gpu$g"
        fi
    done
    cat >"$DIR/gres.conf.new" <<EOF
# fake GPUs: scheduled and reported by Slurm; the devices are copies of /dev/null
NodeName=${NODES[0]},${NODES[1]} Name=gpu File=$DIR/dev/gpu[0-1]
EOF
    mv "$DIR/gres.conf.new" "$DIR/gres.conf"
    mv "$CONF.new" "$CONF"
}

pid_alive() {  # pid_alive FILE: the pid in FILE is a running process
    local pid
    pid="$(cat "$1" 2>/dev/null)" && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

start_munge() {
    if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null >/dev/null 2>&1; then
        return
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        /usr/sbin/mungekey -c
    fi
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key 2>/dev/null || true
    munged --force
    for _ in $(seq 50); do
        munge -n </dev/null >/dev/null 2>&1 && return
        sleep 0.1
    done
    log "munged did not come up"
    exit 1
}

cmd_start() {
    need_root
    command -v slurmctld >/dev/null || { log "Slurm is not installed: run '$0 install'"; exit 2; }
    write_config
    start_munge
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        # -i: ignore state files of an earlier run that do not match this configuration
        slurmctld -f "$CONF" -i
    fi
    local i
    for i in "${!NODES[@]}"; do
        if ! pid_alive "$DIR/run/slurmd-${NODES[$i]}.pid"; then
            mkdir -p "$DIR/spool-${NODES[$i]}"
            slurmd -f "$CONF" -N "${NODES[$i]}"
        fi
    done
    cmd_check
}

cmd_check() {  # both nodes up (idle, or in use by jobs) within 60 s
    local out="" deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        out="$(timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null || true)"
        if [[ "$(grep -cE '^n[12] (idle|mix|alloc)$' <<<"$out")" == 2 ]]; then
            log "cluster up (SLURM_CONF=$CONF):"
            sinfo -N >&2
            return 0
        fi
        # a node that registered before slurmctld knew it may come back down; wake it
        if grep -qE 'down|drain' <<<"$out"; then
            timeout 10 scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1 || true
        fi
        sleep 0.5
    done
    log "the cluster is not up; sinfo says:"
    echo "${out:-(no answer)}" >&2
    log "logs: $DIR/log"
    return 1
}

cmd_stop() {
    local f pid
    if pid_alive "$DIR/run/slurmctld.pid"; then
        timeout 20 scontrol shutdown >/dev/null 2>&1 || true
    fi
    for f in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid"; do
        pid="$(cat "$f" 2>/dev/null)" || continue  # a daemon that stopped removes its file
        [[ -n "$pid" ]] || continue
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            sleep 1
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    if [[ -s /run/munge/munged.pid ]]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    fi
    log "stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    check) cmd_check ;;
    stop) cmd_stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    up) cmd_install; cmd_start ;;
    restart) cmd_stop; cmd_start ;;
    *)
        sed -n '2,10p' "$0" >&2
        exit 2
        ;;
esac
