#!/bin/sh
# pokelab's runner of kselftest ftrace-style .tc files in the guest (busybox sh), after
# tools/testing/selftests/ftrace/ftracetest: each .tc is sourced by a subshell in the
# tracefs dir with `set -e`, after the helpers below; its exit status is its result
# (ftracetest's Dejagnu codes: 0 PASS, 1 FAIL, 2 UNRESOLVED, 3 UNTESTED, 4 UNSUPPORTED,
# 5 XFAIL).  `# requires:` lines name what the test needs (see check_requires); one
# missing is UNSUPPORTED.  Prints `POKELAB-TC <result> <exit> <file>` per test and
# keeps its log in <file>.log.
#   usage: tc_runner.sh TRACING_DIR TIMEOUT_S FILE.tc...
TRACING_DIR=$1; TIMEOUT=$2; shift 2
HELPERS='
exit_pass () { exit 0; }
exit_fail () { exit 1; }
exit_unresolved () { exit 2; }
exit_untested () { exit 3; }
exit_unsupported () { exit 4; }
exit_xfail () { exit 5; }
fail () { echo "$@"; exit_fail; }
clear_trace () { echo > trace; }
disable_tracing () { echo 0 > tracing_on; }
enable_tracing () { echo 1 > tracing_on; }
reset_tracer () { echo nop > current_tracer; }
reset_ftrace_filter () { echo > set_ftrace_filter; }
disable_events () { echo 0 > events/enable; }
initialize_ftrace () {
    disable_tracing; reset_tracer; disable_events; reset_ftrace_filter
    [ -f kprobe_events ] && echo > kprobe_events
    [ -f set_event_pid ] && echo > set_event_pid
    [ -f set_ftrace_pid ] && echo > set_ftrace_pid
    clear_trace; enable_tracing
}
'
check_requires () { # FILE.tc: "" if met, else the first requirement missing
    # as ftracetest's checkreq: the quoted words of the `# requires:` lines, each a tracefs
    # file, "a string":README, a NAME:tracer in available_tracers or a NAME:program
    reqs=$(sed -n 's/^#[ \t]*requires:\(.*\)/\1/p' "$1" | tr '\n' ' ')
    eval "set -- $reqs"
    for r in "$@"; do
        case "$r" in
        *:README) grep -qF -- "${r%:README}" "$TRACING_DIR/README" 2>/dev/null || { echo "$r"; return; } ;;
        *:tracer) grep -qw -- "${r%:tracer}" "$TRACING_DIR/available_tracers" 2>/dev/null \
                      || { echo "$r"; return; } ;;
        *:program) command -v "${r%:program}" > /dev/null 2>&1 || { echo "$r"; return; } ;;
        *) [ -e "$TRACING_DIR/$r" ] || { echo "$r"; return; } ;;
        esac
    done
}
for tc in "$@"; do
    missing=$(check_requires "$tc")
    if [ -n "$missing" ]; then
        echo "requires $missing: missing" > "$tc.log"
        echo "POKELAB-TC UNSUPPORTED 4 $tc"
        continue
    fi
    timeout -s TERM "$TIMEOUT" sh -c '
        cd "$1" || exit 2
        eval "$2"
        read PID _ < /proc/self/stat
        set -e
        set -x
        initialize_ftrace
        . "$3"' tc "$TRACING_DIR" "$HELPERS" "$tc" > "$tc.log" 2>&1
    rc=$?
    case $rc in
    0) r=PASS ;; 1) r=FAIL ;; 2) r=UNRESOLVED ;; 3) r=UNTESTED ;; 4) r=UNSUPPORTED ;; 5) r=XFAIL ;;
    124|143) r=TIMEOUT ;; *) r=FAIL ;;
    esac
    echo "POKELAB-TC $r $rc $tc"
done
# a clean tracer after the last test, as initialize_ftrace leaves it before each
( cd "$TRACING_DIR" && eval "$HELPERS" && initialize_ftrace ) > /dev/null 2>&1
true
