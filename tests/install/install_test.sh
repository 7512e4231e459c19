#!/usr/bin/env bash
# install_test.sh BUILD_DIR SOURCE_DIR WORK_DIR — what `cmake --install` puts in a prefix works:
# the files the README lists are there, the systemd units pass `systemd-analyze verify` without a
# warning and keep their hardening, the installed client configuration loads the installed model
# (its digest is the one the installed coordinator configuration pins), and a C++ project outside
# the tree builds and runs against the installed libraries with find_package(fedlora).
set -euo pipefail
build="$(cd "$1" && pwd)" src="$(cd "$2" && pwd)" work="$3"
rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"
fail() { echo "install_test: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" > "$work/install.log" \
  || { cat "$work/install.log"; fail "cmake --install failed"; }

for f in bin/fedlora-coordinator bin/fedlora-client bin/fedlora-sim bin/fedlora-agg \
         bin/libfedlora_spm_shim.so \
         lib/systemd/system/fedlora-coordinator.service lib/systemd/system/fedlora-client.service \
         etc/fedlora/coordinator.yaml etc/fedlora/client.yaml \
         share/fedlora/configs/coordinator.yaml share/fedlora/configs/sim/scale-100k.yaml \
         share/fedlora/assets/models/stories260K/stories260K.bin \
         share/fedlora/grafana/fedlora.json share/doc/fedlora/README.md bin/fedlora-report \
         lib/cmake/fedlora/fedlora-config.cmake lib/libfedlora_common.a \
         include/fedlora/common/status.h include/fedlora/common/ops/prometheus_text.h \
         include/fedlora/server/coordinator.h; do
  [[ -e "$prefix/$f" ]] || fail "missing $prefix/$f"
done

# The units: systemd-analyze prints warnings (an unknown key, a bad value) but still exits 0, so
# any output fails too. Then the hardening the units promise.
for unit in fedlora-coordinator fedlora-client; do
  path="$prefix/lib/systemd/system/$unit.service"
  out="$(systemd-analyze verify "$path" 2>&1)" || fail "systemd-analyze verify $unit: $out"
  [[ -z "$out" ]] || fail "systemd-analyze verify $unit warned: $out"
  for directive in "DynamicUser=yes" "StateDirectory=$unit" "ProtectSystem=strict" \
                   "NoNewPrivileges=yes" "Restart=on-failure" "CapabilityBoundingSet=" \
                   "ExecStart=$prefix/bin/$unit --config $prefix/etc/fedlora/"; do
    grep -q "^$directive" "$path" || fail "$unit.service lacks $directive"
  done
done
grep -q '^ExecReload=/bin/kill -HUP $MAINPID' "$prefix/lib/systemd/system/fedlora-coordinator.service" \
  || fail "fedlora-coordinator.service cannot reload authorized_clients (SIGHUP)"

# The installed configurations, after the keys their comments ask for: the client's loads the
# installed model, and its digest is the one the coordinator's requires.
keys="$prefix/etc/fedlora/keys"
"$prefix/bin/fedlora-coordinator" keygen --dir "$keys" > "$work/keygen.log" 2>&1 \
  || { cat "$work/keygen.log"; fail "coordinator keygen failed"; }
"$prefix/bin/fedlora-client" keygen --name edge-1 --dir "$keys" >> "$work/keygen.log" 2>&1 \
  || { cat "$work/keygen.log"; fail "client keygen failed"; }
digest="$("$prefix/bin/fedlora-client" --config "$prefix/etc/fedlora/client.yaml" --set name=edge-1 \
            --print-digest 2>"$work/digest.log" | tail -1)" || { cat "$work/digest.log"; fail "--print-digest failed"; }
grep -q "^base_model_sha256: $digest\$" "$prefix/etc/fedlora/coordinator.yaml" \
  || fail "client digest '$digest' is not the coordinator configuration's base_model_sha256"

# A project outside the tree.
cmake -S "$src/tests/install/consumer" -B "$work/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" > "$work/consumer.log" 2>&1 \
  || { cat "$work/consumer.log"; fail "find_package(fedlora) failed"; }
cmake --build "$work/consumer" > "$work/consumer-build.log" 2>&1 \
  || { cat "$work/consumer-build.log"; fail "the consumer did not build"; }
out="$("$work/consumer/consumer" "$work/roundtrip.safetensors")" || fail "the consumer failed"
[[ "$out" == *"consumer_tensors 1"* ]] || fail "unexpected consumer output: $out"
# The .deb: /usr binaries, units that start them, configurations in /etc as conffiles.
(cd "$work" && cpack --config "$build/CPackConfig.cmake" -B "$work/deb" > "$work/cpack.log" 2>&1) \
  || { cat "$work/cpack.log"; fail "cpack failed"; }
deb="$(ls "$work"/deb/fedlora_*.deb)"
dpkg-deb -c "$deb" | grep ' ./usr/bin/fedlora-coordinator$' > /dev/null || fail "the .deb lacks /usr/bin/fedlora-coordinator"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/systemd/system/fedlora-coordinator.service \
  | grep '^ExecStart=/usr/bin/fedlora-coordinator --config /etc/fedlora/coordinator.yaml' > /dev/null \
  || fail "the .deb's unit does not start /usr/bin/fedlora-coordinator with /etc/fedlora"
dpkg-deb -e "$deb" "$work/deb/control"
grep -qx /etc/fedlora/coordinator.yaml "$work/deb/control/conffiles" || fail "no conffiles in the .deb"
echo "install_test: OK ($prefix, $(basename "$deb"))"
