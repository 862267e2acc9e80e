#!/bin/bash
# `cargo xtask vm kernels`, inside the VM: run each integration-test binary of the
# payload (as the host does), framed by NHI-BIN / NHI-BIN-END lines the host parses.
set -u
P=/mnt/payload
for _ in $(seq 60); do [ -d /sys/fs/bpf ] && mountpoint -q /sys/fs/bpf && break; sleep 1; done
echo "NHI-INFO $(NO_COLOR=1 "$P/target/nhi-agent" status | tr '\n' '|')"
failed=0
for bin in $(cat "$P/tests.txt"); do
    echo "NHI-BIN $bin"
    NHI_REQUIRE_PRIVILEGED=1 NHI_AGENT_BIN="$P/target/nhi-agent" \
        "$P/target/deps/$bin" --test-threads=1 2>&1
    status=$?
    echo "NHI-BIN-END $bin $status"
    [ $status -eq 0 ] || failed=$((failed + 1))
done
exit $failed
