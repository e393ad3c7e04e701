#!/bin/sh
# A user's trigger for `pokelab repro --trigger scenarios/triggers/kprobe-getpid.sh
# --function __do_sys_getpid`: runs from vCPU 0 while pokelab's getpid load runs on the
# others.  A kprobe event on __do_sys_getpid's entry (ftrace-based: the fentry site
# becomes a call while it is enabled), switched on and off twice, then removed.
set -e
T=/sys/kernel/tracing
echo 'p:trigger/getpid __do_sys_getpid' >> $T/kprobe_events
for i in 1 2; do
    echo 1 > $T/events/trigger/getpid/enable
    sleep 0.2
    echo 0 > $T/events/trigger/getpid/enable
done
hits=$(awk '$1 ~ /getpid$/ {print $2}' $T/kprobe_profile)
echo '-:trigger/getpid' >> $T/kprobe_events
echo "kprobe hits: ${hits:-none}"
