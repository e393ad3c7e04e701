#!/bin/sh
# A user's load for `pokelab repro ops-one --workload scenarios/workloads/kprobe-module-funcs.sh`
# (issue 12): once the scenario's module (pokelab_ops) is loaded, kprobe events on two of its
# functions are added and enabled, and left there: the scenario's teardown unloads the module
# under them (the kernel disarms them, then frees the module's text).  Then getpid in a loop.
T=/sys/kernel/tracing
n=0
while [ ! -e /sys/kernel/debug/pokelab_ops/control ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
if mkdir /tmp/kprobe-module-funcs.lock 2>/dev/null; then  # one copy of the load does it
    echo 'p:pokelab_wl/cw control_write' >> $T/kprobe_events
    echo 'p:pokelab_wl/cs counts_show' >> $T/kprobe_events
    echo 1 > $T/events/pokelab_wl/enable
fi
exec /bin/loadgen getpid
