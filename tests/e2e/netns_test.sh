#!/usr/bin/env bash
# Three hosts simulated with network namespaces: one `tern worker` in each, the coordinator in a
# fourth, all joined by veth links to a bridge in a fifth namespace, every host's link shaped with
# tc (netem rate + delay where the kernel has netem, else a tbf rate limit). The shards are
# streamed from the coordinator (the hosts share no disk in spirit). The cluster must produce
# exactly the tokens and logits of one process.
# Usage: netns_test.sh TERN_EXE DATA_DIR. Exit 77 (skipped) where namespaces are not permitted.
set -euo pipefail
tern=$1
data=$2
model=$data/stories260K/stories260K.gguf

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "creating network namespaces needs root"
command -v ip >/dev/null || skip "ip (iproute2) is not installed"
command -v tc >/dev/null || skip "tc (iproute2) is not installed"

tag="tn$$"
sw="${tag}sw"
hosts=("${tag}c" "${tag}h1" "${tag}h2" "${tag}h3")  # coordinator, then the workers
tmp=$(mktemp -d /tmp/tern-netns-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for n in "${hosts[@]}" "$sw"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Building the hosts: a machine that refuses any step (no namespaces, no veth or bridge support)
# skips the test; only what the cluster does afterwards can fail it.
ip netns add "$sw" 2>/dev/null || skip "this machine does not permit network namespaces"
ip -n "$sw" link add br0 type bridge 2>/dev/null || skip "no bridge support in this kernel"
ip -n "$sw" link set br0 up || skip "cannot bring the bridge up"
shaping=""
for i in "${!hosts[@]}"; do
  h=${hosts[$i]}
  ip netns add "$h" || skip "cannot create namespace $h"
  ip -n "$h" link set lo up || skip "cannot bring lo up in $h"
  ip -n "$h" link add eth0 type veth peer name "p$i" netns "$sw" 2>/dev/null ||
    skip "no veth support in this kernel"
  { ip -n "$sw" link set "p$i" master br0 && ip -n "$sw" link set "p$i" up &&
    ip -n "$h" addr add "10.213.0.$((i + 1))/24" dev eth0 && ip -n "$h" link set eth0 up; } ||
    skip "cannot wire host $h to the bridge"
  # 1 Gbit/s with 2 ms one-way delay per host link where netem exists; a rate limit otherwise.
  if ip netns exec "$h" tc qdisc add dev eth0 root netem rate 1gbit delay 2ms 2>/dev/null; then
    shaping="netem rate 1gbit delay 2ms"
  elif ip netns exec "$h" tc qdisc add dev eth0 root tbf rate 1gbit burst 256kb latency 50ms 2>/dev/null; then
    shaping="tbf rate 1gbit (this kernel has no netem: no delay)"
  else
    skip "tc cannot shape links here"
  fi
done
echo "links: $shaping"

# The workers, one per host namespace.
workers=""
for i in 1 2 3; do
  addr="10.213.0.$((i + 1)):7000"
  ip netns exec "${hosts[$i]}" "$tern" worker --listen "$addr" --insecure --threads 1 --no-calibrate \
    >"$tmp/w$i.out" 2>"$tmp/w$i.err" &
  pids+=($!)
  workers+="${workers:+,}$addr"
done
for i in 1 2 3; do
  for _ in $(seq 300); do
    grep -q "listening on" "$tmp/w$i.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "listening on" "$tmp/w$i.out" || { echo "worker $i did not start:"; cat "$tmp/w$i.err"; exit 1; }
done

args=(-m "$model" -p "Once upon a time" -n 32 --temp 0 -t 1)
"$tern" run "${args[@]}" --stages 1 --logits-out "$tmp/one.logits" >"$tmp/one.txt" 2>"$tmp/one.err"
ip netns exec "${hosts[0]}" "$tern" run "${args[@]}" --workers "$workers" --insecure --split even \
  --shard-source stream --logits-out "$tmp/cluster.logits" >"$tmp/cluster.txt" 2>"$tmp/cluster.err" ||
  { echo "cluster run failed:"; cat "$tmp/cluster.err"; exit 1; }

grep -E "^stage [0-9]" "$tmp/cluster.err" || true
if ! cmp -s "$tmp/one.txt" "$tmp/cluster.txt"; then
  echo "FAIL: tokens differ"; echo "one process:"; cat "$tmp/one.txt"; echo "3 hosts:"; cat "$tmp/cluster.txt"; exit 1
fi
if ! cmp -s "$tmp/one.logits" "$tmp/cluster.logits"; then
  echo "FAIL: logits differ"; exit 1
fi
[ "$(grep -c '^stage [0-9]' "$tmp/cluster.err")" -eq 3 ] || { echo "FAIL: expected 3 stages"; cat "$tmp/cluster.err"; exit 1; }
echo "PASS: 3 hosts in network namespaces ($shaping) gave one process's $(wc -c <"$tmp/one.txt")-byte text and logits"
