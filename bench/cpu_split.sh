#!/bin/bash
# bench/cpu_split.sh PID URL [CONNS] [wrk args...]
# User and system CPU of process PID per request, over 6 s of `wrk -t1 -cCONNS URL`
# after a 2 s warm-up (from /proc/PID/stat ticks). wrk shares the machine's cores.
set -euo pipefail
PID=$1; URL=$2; C=${3:-32}; shift $(( $# < 3 ? $# : 3 ))
wrk -t1 -c"$C" -d2s "$@" "$URL" > /dev/null
read -r u0 s0 < <(awk '{print $14, $15}' /proc/"$PID"/stat)
out=$(wrk -t1 -c"$C" -d6s --latency "$@" "$URL")
read -r u1 s1 < <(awk '{print $14, $15}' /proc/"$PID"/stat)
n=$(echo "$out" | awk '/requests in/{print $1}')
p99=$(echo "$out" | awk '$1=="99%"{print $2}')
tick=$(getconf CLK_TCK)
python3 -c "
n, t = $n, 1e6 / $tick
u, s = ($u1 - $u0) * t / n, ($s1 - $s0) * t / n
print(f'c=$C {n / 6:.0f} req/s, user {u:.1f} system {s:.1f} total {u + s:.1f} us/request, p99 $p99')"
