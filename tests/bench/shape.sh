# shape.sh: sourced by the benchmarks. Emulates a network link between a
# client and one loopback server port with tc (iproute2, as root): traffic
# to and from that TCP port goes through an HTB class of the given rate;
# all other loopback traffic (the server's own, e.g. RGW <-> OSD) is
# untouched. Bandwidth only: the project's machines have no sch_netem, so
# no added latency (each direction still gets the full rate).
#
# shape_up PORT MBIT: installs the shaping on lo (replacing any root qdisc
#   lo had: run the benchmarks on a machine of their own).
# shape_down: removes it (safe to call when shape_up never ran).
#
# Why: on loopback the "link" is the 2 cores both ends share, so a
# benchmark against `tar | ssh` or curl measures CPU, not what a user with a
# real link sees; each benchmark reports its loopback figures first and
# the shaped ones beside them.

SHAPE_ON=0

shape_up() {
	local port=$1 mbit=$2
	command -v tc >/dev/null || { echo "shape: tc (iproute2) is required" >&2; return 1; }
	[ "$(id -u)" = 0 ] || { echo "shape: needs root" >&2; return 1; }
	tc qdisc del dev lo root 2>/dev/null || true
	# r2q: HTB's default quantum (rate / 10) is far too big at these rates
	tc qdisc add dev lo root handle 1: htb default 10 r2q 10000 || return 1
	SHAPE_ON=1
	tc class add dev lo parent 1: classid 1:10 htb rate 100gbit \
		quantum 200000 &&
	tc class add dev lo parent 1: classid 1:20 htb rate "${mbit}mbit" \
		burst 256k cburst 256k &&
	tc filter add dev lo parent 1: protocol ip prio 1 u32 \
		match ip dport "$port" 0xffff flowid 1:20 &&
	tc filter add dev lo parent 1: protocol ip prio 1 u32 \
		match ip sport "$port" 0xffff flowid 1:20 || { shape_down; return 1; }
}

shape_down() {
	[ "$SHAPE_ON" = 1 ] || return 0
	tc qdisc del dev lo root 2>/dev/null || true
	SHAPE_ON=0
}
