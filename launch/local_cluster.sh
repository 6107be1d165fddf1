#!/usr/bin/env bash
# Starts N local processes of launch/train.py as one multi-process (jax.distributed) run and waits for them.
#
#   launch/local_cluster.sh N [train.py flags...]
#   e.g. JAXGAN_LOCAL_DEVICES=2 launch/local_cluster.sh 2 --dataset=ring8 --steps=200 --workdir=/tmp/mh
#   (pass a short --steps to try it: train.py's default is 10,000 steps, ~15 min for 2 processes on 2 cores)
#
# Process i gets --coordinator_address=localhost:PORT (a free port; process 0 hosts the coordinator)
# --num_processes=N --process_id=i. Each process sees JAXGAN_LOCAL_DEVICES simulated CPU devices (default 1;
# JAX_PLATFORMS defaults to cpu: this is for trying multi-host training on one machine). Process 0's output
# goes to stdout/stderr, process i's to $WORKDIR_LOGS/process_i.log (default: a temp dir, printed).
# If any process fails, or this script gets SIGINT/SIGTERM, all processes are killed with SIGKILL
# (jax.distributed traps SIGTERM for preemption handling, so a plain kill would not stop a hung worker).
# Exit status: 0 if all succeeded, else the first failing process's status.
set -u
if [ "$#" -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [launch/train.py flags...]   (N >= 1 processes)" >&2
  exit 2
fi
N="$1"; shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOGS="${WORKDIR_LOGS:-$(mktemp -d -t jaxgan_cluster.XXXXXX)}"
mkdir -p "$LOGS"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
DEVICES="${JAXGAN_LOCAL_DEVICES:-1}"
# the simulated device count per process: JAX_NUM_CPU_DEVICES, and XLA_FLAGS without another count in it
export XLA_FLAGS="$(echo "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g') --xla_force_host_platform_device_count=$DEVICES"
echo "local_cluster: $N processes x $DEVICES device(s), coordinator localhost:$PORT, logs of processes 1.. in $LOGS" >&2

PIDS=()
kill_all() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
}
trap 'echo "local_cluster: interrupted; killing all processes" >&2; kill_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  if [ "$i" -eq 0 ]; then
    JAX_NUM_CPU_DEVICES="$DEVICES" "$PYTHON" "$HERE/train.py" "$@" --coordinator_address="localhost:$PORT" \
      --num_processes="$N" --process_id="$i" &
  else
    JAX_NUM_CPU_DEVICES="$DEVICES" "$PYTHON" "$HERE/train.py" "$@" --coordinator_address="localhost:$PORT" \
      --num_processes="$N" --process_id="$i" >"$LOGS/process_$i.log" 2>&1 &
  fi
  PIDS+=("$!")
done

STATUS=0
RUNNING=("${PIDS[@]}")
while [ "${#RUNNING[@]}" -gt 0 ]; do
  wait -n -p DONE_PID "${RUNNING[@]}"
  RC=$?
  NEXT=()
  for p in "${RUNNING[@]}"; do [ "$p" != "${DONE_PID:-}" ] && NEXT+=("$p"); done
  RUNNING=("${NEXT[@]}")
  if [ "$RC" -ne 0 ] && [ "$STATUS" -eq 0 ]; then
    STATUS=$RC
    for ((i = 0; i < N; i++)); do [ "${PIDS[$i]}" = "${DONE_PID:-}" ] && WHO=$i; done
    echo "local_cluster: process ${WHO:-?} (pid ${DONE_PID:-?}) exited with status $RC; killing the others" >&2
    kill_all
  fi
done
exit "$STATUS"
