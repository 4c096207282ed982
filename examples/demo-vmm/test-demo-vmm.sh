#!/bin/sh
# test-demo-vmm.sh DEMO_VMM CASE - demo-vmm tests driven over the
# control socket, with real KVM guests.  Exit 0 pass, 1 fail, 77 skip.
#
#   rollback  the new VMM dies after it received the final round: the
#             old one resumes the guest, which carries on
#   refusal   the new VMM runs an incompatible version (tag): the
#             handshake refuses, the guest never stops
#   control   malformed and impossible commands get an error line
set -u
vmm=$1
case=$2
if [ ! -w /dev/kvm ]; then
	echo "skip: no usable /dev/kvm" >&2
	exit 77
fi
dir=$(mktemp -d /tmp/demo-vmm-test.XXXXXX)
pids=""
cleanup() {
	for p in $pids; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ctl() { "$vmm" --ctl "$dir/ctl" "$@"; }
# Value of key in a status line.
val() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

start_old() {
	"$vmm" --mem 256M --cpus 2 --control "$dir/ctl" --timeout 3000 \
		"$@" >"$dir/old.log" 2>&1 &
	old=$!
	pids="$pids $old"
	i=0
	until ctl status >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 100 ] || fail "old demo-vmm did not start: $(cat "$dir/old.log")"
		sleep 0.1
	done
}

# The guest still runs here: counters advance, its checks hold.
guest_carries_on() {
	s1=$(ctl status) || fail "status: $s1"
	sleep 0.3
	s2=$(ctl status) || fail "status: $s2"
	case "$s2" in *" guest=ok "*) ;; *) fail "guest error: $s2" ;; esac
	for c in c0 c1; do
		a=$(val "$s1" $c); b=$(val "$s2" $c)
		[ "$b" -gt "$a" ] || fail "$c did not advance ($a -> $b)"
	done
	[ "$(val "$s2" pid)" = "$old" ] || fail "not the old VMM: $s2"
}

case $case in
rollback)
	start_old
	"$vmm" --incoming "$dir/in" --inject die-in-final \
		>"$dir/new.log" 2>&1 &
	new=$!
	pids="$pids $new"
	r=$(ctl handoff "$dir/in") && fail "handoff succeeded: $r"
	echo "reply: $r"
	case "$r" in *"resumed here"*) ;; *) fail "no rollback: $r" ;; esac
	wait $new
	st=$?
	[ $st -eq 137 ] || fail "new VMM exit status $st, expected SIGKILL"
	guest_carries_on
	;;
refusal)
	start_old
	"$vmm" --incoming "$dir/in" --tag demo-vmm/999 \
		>"$dir/new.log" 2>&1 &
	new=$!
	pids="$pids $new"
	r=$(ctl handoff "$dir/in") && fail "handoff succeeded: $r"
	echo "reply: $r"
	case "$r" in *"demo-vmm/999"*) ;; *) fail "no tag refusal: $r" ;; esac
	case "$r" in *"runs on here"*) ;; *) fail "guest was stopped: $r" ;; esac
	guest_carries_on
	;;
control)
	start_old
	expect_error() {
		r=$(ctl "$@") && fail "'$*' succeeded: $r"
		echo "'$*' -> $r"
		case "$r" in "error: "*) ;; *) fail "'$*': $r" ;; esac
	}
	expect_error bogus
	expect_error handoff
	expect_error status extra
	expect_error touch sideways
	expect_error save "$dir/state"		# memfd RAM: no file mode
	expect_error handoff "$dir/nobody"	# nobody listens: times out
	printf 'stat\001us\n' | ctl "$(printf 'stat\001us')" >/dev/null &&
		fail "control character accepted"
	guest_carries_on
	r=$(ctl help) || fail "help: $r"
	r=$(ctl quit) || fail "quit: $r"
	wait $old || fail "old VMM exit status $?"
	[ ! -e "$dir/ctl" ] || fail "control socket left behind"
	;;
*)
	fail "unknown case $case"
	;;
esac
echo "PASS: $case"
