#!/usr/bin/env bash
# Runs the privileged test binaries (BPF_PROG_TEST_RUN against the real programs) inside a
# small VM booted on Debian 12's own kernel (linux-image-amd64, 6.1.x), so that a verifier
# that refuses a program on the kernels our users run is seen here, not in the field.
#
#   xtask/kernel-test/run.sh [--kernel VMLINUZ] [TEST...]
#
# TEST: a test binary's path, or a test target's name (fixtures) for its newest build in
# target/debug/deps, optionally followed by :FILTER, a test name filter for it alone
# (agent:egress_attach_path). Default: fixtures veth answers calls sequences (build them first with
# `cargo test -p sipfilter-tests --no-run`).
#
# Environment (all optional):
#   KERNEL_TEST_DIR      where the kernel is cached and the log is kept (target/kernel-test)
#   KERNEL_TEST_KERNEL   a vmlinuz to boot instead of Debian's linux-image-amd64
#   KERNEL_TEST_MODULES  a folder holding that kernel's veth.ko, sch_ingress.ko and cls_bpf.ko
#   KERNEL_TEST_AGENT    the sipfilter binary the agent tests run (target/debug/sipfilter)
#   KERNEL_TEST_PACKAGE  the Debian kernel package (default: what linux-image-amd64 names)
#   KERNEL_TEST_RELEASE  bookworm (Debian 12, 6.1; the default) or trixie (Debian 13, 6.12)
#   KERNEL_TEST_TIMEOUT  seconds the VM may run (default 600 with KVM, 3600 without)
#   KERNEL_TEST_ACCEL    kvm or tcg (default: kvm where /dev/kvm and vmx/svm are there)
#   KERNEL_TEST_MEM      the VM's memory in MiB (default 1024)
#   KERNEL_TEST_ARGS     extra libtest arguments for every binary (a test name filter, say)
#   KERNEL_TEST_APPEND   extra kernel command line (loglevel=7 shows the kernel's messages)
#
# Needs (Debian): qemu-system-x86, busybox-static, cpio, binutils, iproute2; bpftool is copied in
# when present (one test runs it). Root is not needed on the host: only read-write access
# to /dev/kvm for speed (TCG, much slower, otherwise).
#
# Prints per binary the tests passed and failed, the failures' output (the verifier's log
# when the kernel refused a program), and closes with `kernel-test: N passed, M failed`.
# Exits non-zero when a test failed, a binary did not finish or the VM did not finish.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_dir=${KERNEL_TEST_DIR:-$repo/target/kernel-test}
mem=${KERNEL_TEST_MEM:-1024}
test_args=${KERNEL_TEST_ARGS:-}
kernel=${KERNEL_TEST_KERNEL:-}
default_tests=(fixtures veth answers calls sequences)

say() { echo "kernel-test: $*" >&2; }
die() { say "error: $*"; exit 2; }

binaries=()
while [ $# -gt 0 ]; do
    case $1 in
        --kernel) kernel=${2:?--kernel needs a file}; shift 2 ;;
        --kernel=*) kernel=${1#--kernel=}; shift ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) binaries+=("$1"); shift ;;
    esac
done

for tool in qemu-system-x86_64 busybox cpio gzip timeout; do
    command -v "$tool" >/dev/null || die "$tool is missing (cargo xtask setup installs it)"
done
busybox_path=$(command -v busybox)
if ldd "$busybox_path" >/dev/null 2>&1; then
    die "$busybox_path is dynamically linked: install busybox-static"
fi

mkdir -p "$out_dir"
work=$(mktemp -d "${TMPDIR:-/tmp}/sipfilter-kernel-test.XXXXXX")
cleanup() {
    # A VM left running (the script interrupted): stop it, then drop the temporary files.
    local pid
    pid=$(cat "$work/qemu.pid" 2>/dev/null) || pid=
    if [ -n "$pid" ] && grep -qs '^qemu-system' "/proc/$pid/comm"; then
        kill "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- The test binaries. -------------------------------------------------------------------
newest_build() {
    local name=$1 f newest=
    for f in "$repo"/target/debug/deps/"$name"-*; do
        [[ $(basename "$f") =~ ^$name-[0-9a-f]{16}$ ]] && [ -x "$f" ] || continue
        if [ -z "$newest" ] || [ "$f" -nt "$newest" ]; then newest=$f; fi
    done
    [ -n "$newest" ] && echo "$newest"
}
[ ${#binaries[@]} -gt 0 ] || binaries=("${default_tests[@]}")
resolved=() filters=()
for spec in "${binaries[@]}"; do
    # NAME or PATH, optionally :FILTER (a test name filter for that binary alone).
    b=${spec%%:*} filter=
    [ "$b" = "$spec" ] || filter=${spec#*:}
    if [[ $b == */* ]] || [ -f "$b" ]; then
        [ -f "$b" ] && [ -x "$b" ] || die "$b is not an executable"
        resolved+=("$b")
    else
        newest=$(newest_build "$b") ||
            die "no $b test binary in target/debug/deps: run cargo test -p sipfilter-tests --no-run"
        resolved+=("$newest")
    fi
    filters+=("$filter")
done
binaries=("${resolved[@]}")

# --- The kernel: Debian's own image, fetched once with apt and kept in $out_dir. ----------
# The modules the tests need that Debian builds as modules: veth (the veth tests) and
# sch_ingress and cls_bpf (clsact and its BPF filter: the egress attach path below 6.6).
# Kept next to the kernel.
modules=(kernel/drivers/net/veth.ko kernel/net/sched/sch_ingress.ko kernel/net/sched/cls_bpf.ko)
# Which Debian release's kernel: bookworm (12, 6.1: this machine's own archive) or trixie
# (13, 6.12: the same archive's trixie suite, listed in a private apt state under $out_dir,
# so the host's sources and packages are never touched).
release=${KERNEL_TEST_RELEASE:-bookworm}
apt_opts=(-o APT::Sandbox::User="$(id -un)")
case $release in
    bookworm) kernel_glob=6.1. ;;
    trixie) kernel_glob=6.12.
        aptdir=$out_dir/apt-trixie
        apt_opts+=(-o Dir::Etc::SourceList="$aptdir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
            -o Dir::State::Lists="$aptdir/lists" -o Dir::Cache="$aptdir/cache") ;;
    *) die "KERNEL_TEST_RELEASE must be bookworm or trixie" ;;
esac
private_apt_update() {
    [ "$release" = bookworm ] && return 0
    mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" || return 1
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $release main" \
        >"$aptdir/sources.list" || return 1
    say "listing $release's packages (private apt state in $aptdir)"
    apt-get "${apt_opts[@]}" -q update >&2
}
fetch_kernel() {
    local pkg=${KERNEL_TEST_PACKAGE:-}
    if [ -z "$pkg" ]; then
        private_apt_update || return 1
        # The metapackage names the current ABI: linux-image-6.1.0-NN-amd64 on Debian 12,
        # linux-image-6.12.NN+deb13-amd64 on Debian 13.
        pkg=$(apt-cache "${apt_opts[@]}" show --no-all-versions linux-image-amd64 2>/dev/null |
            sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -n1) || true
    fi
    [ -n "$pkg" ] || return 1
    local abi=${pkg#linux-image-}
    local cached=$out_dir/vmlinuz-$abi mods=$out_dir/modules-$abi m missing=
    for m in "${modules[@]}"; do [ -s "$mods/$(basename "$m")" ] || missing=1; done
    if [ ! -s "$cached" ] || [ -n "$missing" ]; then
        say "fetching $pkg (Debian's kernel) with apt-get download"
        local dl=$work/deb
        mkdir -p "$dl"
        (cd "$dl" && apt-get download -q "${apt_opts[@]}" "$pkg" >&2) ||
            return 1
        # Debian 12 keeps modules in /lib, Debian 13 in /usr/lib and xz-compressed.
        local patterns=('./boot/vmlinuz-*')
        for m in "${modules[@]}"; do patterns+=("*/modules/*/$m*"); done
        # (set -e does not apply in a function called from $(...) ||: every step is checked.)
        local deb
        deb=$(ls "$dl"/*.deb | head -n1) && [ -n "$deb" ] || return 1
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dl" --wildcards "${patterns[@]}" || return 1
        # The modules folder appears whole or not at all: a partial one would hide the
        # installed kernel's modules.
        mkdir -p "$dl/modules"
        for m in "${modules[@]}"; do
            local f
            f=$(find "$dl" -path "*/modules/*/$m*" -print -quit) && [ -n "$f" ] || return 1
            case $f in
                *.xz) xz -dc "$f" >"$dl/modules/$(basename "$m")" || return 1 ;;
                *) cp "$f" "$dl/modules/" || return 1 ;;
            esac
        done
        rm -rf "$mods" && mv "$dl/modules" "$mods" || return 1
        local v
        v=$(ls "$dl"/boot/vmlinuz-* | head -n1) && [ -n "$v" ] || return 1
        cp "$v" "$cached.tmp" && mv "$cached.tmp" "$cached" || return 1
        rm -rf "$dl"
    fi
    echo "$cached"
}

if [ -z "$kernel" ]; then
    kernel=$(fetch_kernel) || kernel=
fi
if [ -z "$kernel" ]; then
    # Offline: the newest kernel fetched before, else an installed Debian 12 kernel.
    kernel=$(ls -t "$out_dir"/vmlinuz-$kernel_glob* /boot/vmlinuz-$kernel_glob* 2>/dev/null | head -n1) || true
fi
[ -n "$kernel" ] && [ -r "$kernel" ] ||
    die "no kernel: apt could not fetch linux-image-amd64 and none is cached or in /boot (or pass --kernel)"
# The modules that go with it: fetched with it, else an installed kernel's, else none (the
# tests that need them then fail saying so).
abi=$(basename "$kernel"); abi=${abi#vmlinuz-}
module_dir=${KERNEL_TEST_MODULES:-}
if [ -z "$module_dir" ]; then
    for d in "$out_dir/modules-$abi" "/lib/modules/$abi"; do
        whole=1
        for m in "${modules[@]}"; do
            [ -n "$(find "$d" -name "$(basename "$m")" -print -quit 2>/dev/null)" ] || whole=
        done
        if [ -n "$whole" ]; then module_dir=$d; break; fi
    done
    [ -n "$module_dir" ] ||
        say "warning: no folder holds $abi's ${modules[*]##*/}: the veth and agent tests will fail"
fi

# --- The root filesystem: busybox, the binaries and their libraries, an /init. ---------------
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,tests,etc}
cp "$busybox_path" "$root/bin/busybox"
for applet in $("$busybox_path" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Copies the shared libraries (and the loader) that `ldd` lists for $1, at the same paths.
copy_libs() {
    local lib
    for lib in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true); do
        if [ ! -e "$root$lib" ]; then
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        fi
    done
}

names=()
for b in "${binaries[@]}"; do
    name=$(basename "$b")
    if [[ $name =~ ^(.*)-[0-9a-f]{16}$ ]]; then name=${BASH_REMATCH[1]}; fi
    # A name given twice (agent:a agent:b) runs under a name of its own: the summary reads
    # each run's section by its name.
    for seen in "${names[@]}"; do
        if [ "$seen" = "$name" ]; then name=$name-run$((${#names[@]} + 1)); break; fi
    done
    # Debug info makes the binaries 6x larger; symbols stay for backtraces.
    if command -v objcopy >/dev/null; then
        objcopy --strip-debug "$b" "$root/tests/$name"
    else
        cp "$b" "$root/tests/$name"
    fi
    copy_libs "$b"
    names+=("$name")
done
# The agent, for the agent tests (they look for it beside the test binaries).
agent_bin=${KERNEL_TEST_AGENT:-$repo/target/debug/sipfilter}
if [ -x "$agent_bin" ]; then
    if command -v objcopy >/dev/null; then
        objcopy --strip-debug "$agent_bin" "$root/tests/sipfilter"
    else
        cp "$agent_bin" "$root/tests/sipfilter"
    fi
    copy_libs "$agent_bin"
fi
# iproute2's ip and tc: the veth and agent tests make namespaces and veth pairs with it (busybox's cannot).
ip_path=$(command -v ip) || die "ip (iproute2) is missing"
cp -L "$ip_path" "$root/bin/ip.iproute2"
ln -sf ip.iproute2 "$root/bin/ip"
copy_libs "$ip_path"
if tc_path=$(command -v tc); then
    cp -L "$tc_path" "$root/bin/tc.iproute2"
    ln -sf tc.iproute2 "$root/bin/tc"
    copy_libs "$tc_path"
fi
mkdir -p "$root/modules"
if [ -n "$module_dir" ]; then
    for m in "${modules[@]}"; do
        f=$(find "$module_dir" -name "$(basename "$m")" -print -quit 2>/dev/null)
        [ -n "$f" ] && cp "$f" "$root/modules/"
    done
fi
if bpftool=$(command -v bpftool); then
    cp -L "$bpftool" "$root/usr/sbin/bpftool"
    copy_libs "$bpftool"
fi

# $1 in single quotes for a POSIX shell.
quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

cat >"$root/init" <<EOF
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp RUST_BACKTRACE=0
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /sys/fs/bpf
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /var && ln -s /run /var/run
for m in /modules/*.ko; do [ -e "\$m" ] && insmod "\$m"; done
ip link set lo up
echo "KERNEL-TEST: kernel \$(uname -r) \$(uname -v)"
$(for i in "${!names[@]}"; do
    t=${names[$i]}
    echo "echo \"KERNEL-TEST: begin $t\""
    # Every argument quoted for the VM's shell: KERNEL_TEST_ARGS split into words (not
    # globbed), a binary's filter kept whole.
    args=""
    set -f
    for a in $test_args; do args+=" $(quote "$a")"; done
    set +f
    [ -z "${filters[$i]}" ] || args+=" $(quote "${filters[$i]}")"
    echo "/tests/$t --test-threads=1 --color never$args"
    echo "echo \"KERNEL-TEST: end $t rc=\$?\""
done)
echo "KERNEL-TEST: all done"
sync
poweroff -f
sleep 2
echo o >/proc/sysrq-trigger
EOF
chmod +x "$root/init"

initrd=$work/initrd.cpio.gz
(cd "$root" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 >"$initrd"

# --- Boot. ----------------------------------------------------------------------------------
# KVM needs hardware virtualization (vmx/svm) besides /dev/kvm: a /dev/kvm without it (PVM,
# kvm_pvm, as on some cloud sandboxes) runs only guests built for it, and a stock kernel
# hangs in its decompressor there. KERNEL_TEST_ACCEL=kvm|tcg overrides the choice.
accel_kind=${KERNEL_TEST_ACCEL:-}
if [ -z "$accel_kind" ]; then
    if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        accel_kind=kvm
    else
        accel_kind=tcg
        if [ -e /dev/kvm ]; then
            say "/dev/kvm exists but the CPU has no vmx/svm (a PVM host?): emulating (TCG) instead"
        else
            say "no /dev/kvm: emulating (TCG)"
        fi
    fi
fi
case $accel_kind in
    kvm) accel=(-accel kvm -cpu host); limit=${KERNEL_TEST_TIMEOUT:-600} ;;
    tcg) accel=(-accel tcg -cpu max); limit=${KERNEL_TEST_TIMEOUT:-3600} ;;
    *) die "KERNEL_TEST_ACCEL must be kvm or tcg" ;;
esac
log=$out_dir/kernel-test.log
# How long it will take, said before it starts: the last run of this kernel under this
# accelerator, if there was one; under TCG, what this kind of machine takes.
timing=$out_dir/last-run-$(basename "$kernel")-$accel_kind
if [ -s "$timing" ]; then
    say "the last run on $(basename "$kernel") under $accel_kind took $(cat "$timing")"
elif [ "$accel_kind" = tcg ]; then
    say "TCG emulates every instruction: expect 1 to 3 minutes per suite (a 2-core machine ran fixtures, veth and agent in 3 minutes), at most ${limit}s"
fi
say "booting $(basename "$kernel") (${accel[1]}, ${mem} MiB) with: ${names[*]}; full output: $log"
start=$(date +%s)
# mawk (Debian's awk) reads a pipe in blocks unless told otherwise.
awk_opts=()
if awk -W version 2>&1 | grep -q mawk; then awk_opts=(-W interactive); fi
set +e
# --foreground: Ctrl-C reaches qemu too (timeout would otherwise shield it). The console is
# written to the log as it comes (sed -u: no buffering in the pipe), and the terminal gets a
# line as each suite starts and ends (all of the console with KERNEL_TEST_VERBOSE=1).
timeout --foreground --kill-after=10 "$limit" qemu-system-x86_64 "${accel[@]}" \
    -machine q35 -smp 2 -m "$mem" -nodefaults -no-user-config -display none \
    -serial stdio -monitor none -nic none -no-reboot -pidfile "$work/qemu.pid" \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 ${KERNEL_TEST_APPEND:-}" </dev/null |
    sed -u 's/\r$//' | tee "$log" |
    awk "${awk_opts[@]}" -v start="$start" -v verbose="${KERNEL_TEST_VERBOSE:-0}" '
        function stamp() { t = systime() - start; return sprintf("[%02d:%02d]", t / 60, t % 60) }
        verbose == 1 { print; fflush(); next }
        /^KERNEL-TEST: kernel / { print "kernel-test: " stamp() " booted " substr($0, 21); fflush(); next }
        /^KERNEL-TEST: begin / { suite = $3; began = systime(); result = "";
            print "kernel-test: " stamp() " " suite ": started"; fflush(); next }
        /^test result: / { result = $4 " passed, " $6 " failed"; next }
        /^KERNEL-TEST: end / { sub(/^rc=/, "", $4);
            print "kernel-test: " stamp() " " $3 ": " (result == "" ? "no test result" : result) \
                " (exit " $4 ", " systime() - began " s)"; fflush(); next }'
qemu_rc=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))
echo "${elapsed}s for ${names[*]}" >"$timing"

# --- Summary. -------------------------------------------------------------------------------
echo
echo "===== kernel-test summary ====="
kernel_line=$(sed -n 's/^KERNEL-TEST: kernel //p' "$log" | head -n1)
echo "kernel: ${kernel_line:-unknown (did not boot?)}  ($(basename "$kernel"), ${accel[1]}, ${elapsed}s)"
total_pass=0 total_fail=0 bad=0
for name in "${names[@]}"; do
    section=$(sed -n "/^KERNEL-TEST: begin $name\$/,/^KERNEL-TEST: end $name rc=/p" "$log")
    rc=$(sed -n "s/^KERNEL-TEST: end $name rc=//p" <<<"$section")
    result=$(grep -E '^test result: ' <<<"$section" | tail -n1 || true)
    pass=$(sed -n 's/.* \([0-9]*\) passed;.*/\1/p' <<<"$result")
    fail=$(sed -n 's/.* \([0-9]*\) failed;.*/\1/p' <<<"$result")
    pass=${pass:-0} fail=${fail:-0}
    total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail))
    if [ -z "$rc" ]; then
        echo "$name: did not finish (${pass} passed, ${fail} failed before it stopped)"
        bad=1
    elif [ -z "$result" ]; then
        echo "$name: exited with $rc before running its tests"
        bad=1
    else
        echo "$name: $pass passed, $fail failed (exit $rc)"
        [ "$rc" = 0 ] || bad=1
    fi
    grep -E '^test .* \.\.\. FAILED$' <<<"$section" | sed 's/^test /    FAILED /; s/ \.\.\. FAILED$//' || true
done
if grep -q '^KERNEL-TEST: all done' "$log"; then
    :
else
    echo "the VM did not finish (qemu exit $qemu_rc; 124 is the ${limit}s timeout)"
    bad=1
fi
if [ "$total_fail" -gt 0 ]; then
    echo
    echo "===== failures (a refusal's first 3 and last 30 lines once; all of it in $log) ====="
    awk '
        function flush(   i, key) {
            if (title == "") return
            while (n > 0 && lines[n] == "") n--
            print "--- " bin " :: " title
            key = lines[1]
            sub(/ Verifier output:.*/, "", key)
            if (key in seen) {
                print "    " substr(key, 1, 300)
                print "    (as in " seen[key] " above)"
            } else {
                seen[key] = bin " :: " title
                for (i = 1; i <= n; i++)
                    if (i <= 3 || i > n - 30) print "    " substr(lines[i], 1, 400)
                    else if (i == 4) print "    [... " n - 33 " lines ...]"
            }
            title = ""
        }
        /^KERNEL-TEST: begin / { flush(); bin = $3; next }
        /^KERNEL-TEST: end / { flush(); next }
        /^---- .* stdout ----$/ { flush(); title = $2; n = 0; next }
        /^failures:$/ { flush(); next }
        title != "" { lines[++n] = $0 }
        END { flush() }' "$log"
fi
echo
echo "kernel-test: $total_pass passed, $total_fail failed"
[ "$bad" = 0 ] && [ "$total_fail" = 0 ]
