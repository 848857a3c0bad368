#!/usr/bin/env bash
# Start / stop a one-node SLURM cluster on this machine, for CI and the SLURM tests.
#
#   .ci/slurm.sh up       install slurm-wlm + munge when missing, write a one-node
#                         configuration, start munged, slurmctld and slurmd, wait until the
#                         node is idle and run a trivial job (exit 0 only if all of that worked)
#   .ci/slurm.sh down     stop the daemons this script started
#   .ci/slurm.sh status   show the daemons, the node and the queue
#   .ci/slurm.sh env      print "export SLURM_CONF=..." for the running cluster
#
# Needs root (it installs packages and starts daemons).  Known to work on Debian 12 with
# slurm-wlm 22.05 inside a container without systemd.  Everything the cluster writes lives
# in $QSMPREP_SLURM_DIR (default /tmp/qsmprep-slurm): state, spool, logs, the job-completion
# log (jobcomp.log: one line per finished job with its state and exit code, used in place of
# sacct because no slurmdbd runs here) and slurm.conf itself.  /etc/slurm/slurm.conf is
# written too (so every client finds the cluster without SLURM_CONF) unless it already holds a
# configuration that this script did not write.
set -euo pipefail

DIR="${QSMPREP_SLURM_DIR:-/tmp/qsmprep-slurm}"
MARK="# written by qsmprep .ci/slurm.sh"
ETC_CONF=/etc/slurm/slurm.conf

log() { echo "[slurm.sh] $*" >&2; }
die() { echo "[slurm.sh] ERROR: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (it installs slurm-wlm/munge and starts daemons); run it with sudo or in a root CI container."
}

install_packages() {
    local missing=()
    command -v munged >/dev/null 2>&1 || missing+=(munge)
    command -v slurmctld >/dev/null 2>&1 || missing+=(slurm-wlm)
    if [ "${#missing[@]}" -gt 0 ]; then
        command -v apt-get >/dev/null 2>&1 || die "slurm-wlm/munge are missing and there is no apt-get; install ${missing[*]} with your package manager."
        log "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >"$DIR/apt.log" 2>&1 || die "apt-get update failed, see $DIR/apt.log"
        apt-get install -y -q --no-install-recommends munge slurm-wlm >>"$DIR/apt.log" 2>&1 \
            || die "apt-get install munge slurm-wlm failed, see $DIR/apt.log"
    fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running"
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if id munge >/dev/null 2>&1; then
        chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    fi
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    # --force: run as root inside containers where the usual ownership checks fail.
    munged --force --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
        || die "munged did not start, see $DIR/log/munged.log"
    touch "$DIR/munged.ours"
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "munged started but 'munge -n | unmunge' fails, see $DIR/log/munged.log"
}

write_conf() {
    local host cpus mem line sockets cores threads
    host="$(hostname -s)"
    cpus="$(nproc)"
    # slurmd -C reports the real topology; fall back to nproc / free.
    line="$(slurmd -C 2>/dev/null | head -n1 || true)"
    sockets="$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$line")"
    cores="$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$line")"
    threads="$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$line")"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")"
    [ -n "$mem" ] || mem="$(free -m | awk '/^Mem:/{print $2}')"
    mem=$(( mem * 9 / 10 ))                       # leave room for the OS and the daemons
    local topo="CPUs=$cpus"
    if [ -n "$sockets" ] && [ -n "$cores" ] && [ -n "$threads" ] \
        && [ $(( sockets * cores * threads )) = "$cpus" ]; then
        topo="CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads"
    fi
    local addr=""
    getent hosts "$host" >/dev/null 2>&1 || addr=" NodeAddr=127.0.0.1"
    local ctl="$host"
    [ -z "$addr" ] || ctl="$host(127.0.0.1)"
    # Default memory per CPU so that jobs without --mem can share the node (with
    # CR_Core_Memory a job without a request would otherwise get all of it).
    local defmem=$(( mem / cpus / 2 ))
    # One GPU "generic resource" without a device file, so that jobs asking for
    # --gres=gpu:1 (the NSIDL node in workflows/plugins/slurm*.yml) are accepted and scheduled
    # exactly as on a GPU cluster; they still run on the CPU here.
    local ngpu="${QSMPREP_SLURM_GPUS:-1}"
    local gres=""
    if [ "$ngpu" -gt 0 ]; then
        gres=" Gres=gpu:$ngpu"
        echo "NodeName=$host Name=gpu Count=$ngpu File=/dev/null" >"$DIR/gres.conf"
    else
        : >"$DIR/gres.conf"
    fi
    cat >"$DIR/slurm.conf" <<EOF
$MARK
ClusterName=qsmprep-ci
SlurmctldHost=$ctl
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPort=${QSMPREP_SLURMCTLD_PORT:-6817}
SlurmdPort=${QSMPREP_SLURMD_PORT:-6818}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd.%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=${QSMPREP_SLURMD_DEBUG:-info}
# No slurmdbd here: finished jobs are logged to a text file (state + exit code), and
# scontrol keeps them for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
MinJobAge=3600
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
MessageTimeout=30
SlurmdTimeout=300
InactiveLimit=0
KillWait=10
Waittime=0
DefMemPerCPU=$defmem
GresTypes=gpu
NodeName=$host$addr $topo RealMemory=$mem$gres State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mkdir -p /etc/slurm
    if [ ! -e "$ETC_CONF" ] || grep -qF "$MARK" "$ETC_CONF"; then
        cp "$DIR/slurm.conf" "$ETC_CONF"
        cp "$DIR/gres.conf" /etc/slurm/gres.conf
        touch "$DIR/etc_conf.ours"
    else
        log "$ETC_CONF holds another configuration; leaving it alone (clients need SLURM_CONF=$DIR/slurm.conf)"
    fi
}

wait_idle() {
    local host state
    host="$(hostname -s)"
    for _ in $(seq 150); do
        state="$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1 || true)"
        case "$state" in
            idle|mixed|allocated) return 0 ;;
            down*|drain*|fail*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    die "node $host is not idle after 30 s (state '${state:-none}'); see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
}

cmd_up() {
    need_root
    mkdir -p "$DIR"/{state,spool,log}
    install_packages
    export SLURM_CONF="$DIR/slurm.conf"
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid"; then
        log "cluster already running"
    else
        start_munge
        write_conf
        if ! pid_alive "$DIR/slurmctld.pid"; then
            # -i: ignore state files from an earlier run
            slurmctld -i -f "$SLURM_CONF" || die "slurmctld did not start, see $DIR/log/slurmctld.log"
        fi
        for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
        scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer 'scontrol ping', see $DIR/log/slurmctld.log"
        if ! pid_alive "$DIR/slurmd.pid"; then
            slurmd -f "$SLURM_CONF" || die "slurmd did not start, see $DIR/log/slurmd.log"
        fi
    fi
    wait_idle
    # A trivial job proves the whole chain: submission, munge credentials, slurmd launch.
    local out="$DIR/log/smoke-%j.out" jid
    jid="$(sbatch --parsable --wait -J ci-smoke -o "$out" --wrap 'echo smoke-ok on $(hostname -s)' 2>"$DIR/log/smoke.err")" \
        || die "the trivial sbatch job failed: $(cat "$DIR/log/smoke.err")"
    jid="${jid%%;*}"
    grep -q smoke-ok "$DIR/log/smoke-$jid.out" || die "the trivial job $jid ran but wrote no output ($DIR/log/smoke-$jid.out)"
    log "cluster up: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -n1); trivial job $jid completed"
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pidfile() {
    local f="$1" name="$2" pid
    if pid_alive "$f"; then
        pid="$(cat "$f")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        log "stopped $name ($pid)"
    fi
    rm -f "$f"
}

cmd_down() {
    export SLURM_CONF="$DIR/slurm.conf"
    if [ -f "$SLURM_CONF" ]; then
        scancel --full --quiet --user=root >/dev/null 2>&1 || true
    fi
    stop_pidfile "$DIR/slurmd.pid" slurmd
    stop_pidfile "$DIR/slurmctld.pid" slurmctld
    if [ -f "$DIR/munged.ours" ]; then
        stop_pidfile "$DIR/munged.pid" munged
        rm -f "$DIR/munged.ours"
    fi
    if [ -f "$DIR/etc_conf.ours" ] && grep -qF "$MARK" "$ETC_CONF" 2>/dev/null; then
        rm -f "$ETC_CONF" /etc/slurm/gres.conf "$DIR/etc_conf.ours"
    fi
    log "cluster down"
}

cmd_status() {
    export SLURM_CONF="$DIR/slurm.conf"
    for d in munged slurmctld slurmd; do
        if pid_alive "$DIR/$d.pid"; then echo "$d: running ($(cat "$DIR/$d.pid"))"; else echo "$d: not running (by this script)"; fi
    done
    sinfo 2>&1 || true
    squeue 2>&1 || true
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
