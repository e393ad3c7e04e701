#!/bin/sh
# A user's load for `pokelab repro SCENARIO --workload scenarios/workloads/shell-loop.sh`:
# what a test script does (fork, exec, read /proc, sleep and wake: the scheduler's paths),
# nothing of pokelab's own loadgen.  It runs pinned on each vCPU but 0 until pokelab stops it.
while :; do
    cat /proc/self/stat > /dev/null
    ls /proc > /dev/null
    sleep 0.01
done
