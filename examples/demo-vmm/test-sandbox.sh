#!/bin/sh
# test-sandbox.sh DEMO_VMM CASE - demo-vmm under its seccomp sandbox
# (--sandbox), with real KVM guests.  Exit 0 pass, 1 fail, 77 skip.
#
#   chain  one guest, file-backed RAM in /dev/shm, every VMM sandboxed:
#          boot, transfer mode to "--incoming PATH --sandbox", exec mode
#          (the new image inherits the filter), file mode ("save FILE",
#          then "--restore FILE --sandbox"); after each, the guest carries
#          on (counters advance, its own checks hold, no ERROR line) and
#          a forbidden syscall is refused with EPERM (selftest-forbidden:
#          socket(AF_INET) and unshare(0)); before the transfer, a
#          rollback (the new VMM dies in the final round)
#   demo   "demo-vmm --handoff --sandbox": the whole demo, each VMM it
#          starts sandboxed
set -u
vmm=$1
case=$2
if [ ! -w /dev/kvm ]; then
	echo "skip: no usable /dev/kvm" >&2
	exit 77
fi
dir=$(mktemp -d /tmp/demo-vmm-sandbox.XXXXXX)
ram=/dev/shm/demo-vmm-sandbox-$$.ram
pids=""
cleanup() {
	for p in $pids; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
	rm -f "$ram"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	for f in "$dir"/*.log; do
		[ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }
	done
	exit 1
}
ctl() { "$vmm" --ctl "$dir/ctl" "$@"; }
# Value of key in a status line.
val() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

wait_ctl() {
	i=0
	until ctl status >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 100 ] || fail "$1 did not start"
		sleep 0.1
	done
}

# pid runs under exactly one seccomp filter (mode 2).
sandboxed() {
	s=$(sed -n 's/^Seccomp:[[:space:]]*//p' "/proc/$1/status")
	n=$(sed -n 's/^Seccomp_filters:[[:space:]]*//p' "/proc/$1/status")
	[ "$s" = 2 ] || fail "pid $1: Seccomp: $s, not a filter"
	[ -z "$n" ] || [ "$n" = 1 ] || fail "pid $1: $n filters stacked"
}

# The guest runs in VMM pid, received in mode (or booted, mode "-"),
# and carries on: counters advance, its checks hold.
carries_on() {
	s1=$(ctl status) || fail "status: $s1"
	[ "$(val "$s1" pid)" = "$1" ] || fail "not pid $1: $s1"
	[ "$2" = - ] || [ "$(val "$s1" last)" = "$2" ] ||
		fail "last handoff not $2: $s1"
	sleep 0.3
	s2=$(ctl status) || fail "status: $s2"
	case "$s2" in *" guest=ok "*) ;; *) fail "guest error: $s2" ;; esac
	for c in c0 c1; do
		a=$(val "$s1" $c); b=$(val "$s2" $c)
		[ "$b" -gt "$a" ] || fail "$c did not advance ($a -> $b)"
	done
	sandboxed "$1"
	r=$(ctl selftest-forbidden) || fail "selftest-forbidden: $r"
	[ "$r" = "ok seccomp=2 socket_inet=EPERM unshare=EPERM" ] ||
		fail "pid $1: a forbidden syscall was not refused: $r"
	echo "pid $1 ($2): guest ok, c0 $a -> $b; $r"
}

case $case in
chain)
	t0=$(date +%s%N)
	"$vmm" --mem 256M --cpus 2 --mem-path "$ram" --control "$dir/ctl" \
		--timeout 5000 --sandbox >"$dir/old.log" 2>&1 &
	old=$!
	pids="$pids $old"
	wait_ctl "the first demo-vmm"
	carries_on $old -

	# a rollback under the filter: the new VMM dies in the final round
	"$vmm" --incoming "$dir/in" --inject die-in-final --sandbox \
		>"$dir/dying.log" 2>&1 &
	dying=$!
	pids="$pids $dying"
	r=$(ctl handoff "$dir/in") && fail "handoff succeeded: $r"
	case "$r" in *"resumed here"*) ;; *) fail "no rollback: $r" ;; esac
	wait $dying
	[ $? -eq 137 ] || fail "the dying VMM was not killed by SIGKILL"
	echo "rollback: $r"
	carries_on $old -

	# transfer mode: to a new sandboxed VMM
	"$vmm" --incoming "$dir/in" --sandbox >"$dir/new.log" 2>&1 &
	new=$!
	pids="$pids $new"
	r=$(ctl handoff "$dir/in") || fail "handoff: $r"
	echo "transfer: $r"
	wait $old || fail "old VMM exit status $?"
	carries_on $new transfer

	# exec mode: same pid, new image, the inherited filter
	r=$(ctl handoff-exec) || fail "handoff-exec: $r"
	[ "$(val "$r" pid)" = "$new" ] || fail "exec: another pid: $r"
	echo "exec: pid $(val "$r" pid) blackout_us=$(val "$r" blackout_us)"
	carries_on $new exec

	# file mode: save, then a sandboxed --restore
	r=$(ctl save "$dir/state") || fail "save: $r"
	echo "file: $r"
	wait $new || fail "saving VMM exit status $?"
	"$vmm" --restore "$dir/state" --control "$dir/ctl" --sandbox \
		>"$dir/restore.log" 2>&1 &
	rst=$!
	pids="$pids $rst"
	wait_ctl "the restoring demo-vmm"
	carries_on $rst file
	[ ! -e "$dir/state" ] || fail "state file not deleted after restore"

	r=$(ctl quit) || fail "quit: $r"
	wait $rst || fail "restoring VMM exit status $?"
	[ ! -e "$ram" ] || fail "RAM file left behind"
	! grep -h ERROR "$dir"/*.log || fail "the guest reported an ERROR"
	n=$(cat "$dir"/old.log "$dir"/restore.log | grep -c " tick .* ok$")
	[ "$n" -gt 0 ] || fail "no tick line on the console"
	echo "chain: $n tick lines, $(( ($(date +%s%N) - t0) / 1000000 )) ms"
	;;
demo)
	"$vmm" --handoff --sandbox >"$dir/demo.log" 2>&1
	st=$?
	[ $st -eq 77 ] && exit 77
	[ $st -eq 0 ] || fail "demo-vmm --handoff --sandbox: status $st"
	! grep ERROR "$dir/demo.log" || fail "the guest reported an ERROR"
	grep "PASS" "$dir/demo.log" || fail "no PASS line"
	;;
*)
	fail "unknown case $case"
	;;
esac
echo "PASS: $case"
