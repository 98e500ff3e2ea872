#!/usr/bin/env bash
# A whole deployed federation on one machine, in separate processes on loopback (issue 17):
#   1. make the federation's CA and certificates (server, alice, bob);
#   2. split MNIST's training set into one folder per school;
#   3. start each school's worker (`lightning-fed worker`), given only its own folder, over mutual TLS;
#   4. run the server's Trainer for ROUNDS rounds (FedAvg at the schools) and print the test accuracy;
#   5. stop the workers.
# Usage (from the repository root, after README's install command):
#   bash examples/deploy/run_local.sh [MNIST_RAW_DIR]       # default: data/MNIST/raw, else ../shared/data/MNIST/raw
# Environment: ROUNDS (default 2), PER_SITE (images per school; default: half of the 60,000 each), WORK (a folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
MNIST="${1:-}"
if [ -z "$MNIST" ]; then
  for candidate in data/MNIST/raw ../shared/data/MNIST/raw; do
    if ls "$candidate"/train-images-idx3-ubyte* >/dev/null 2>&1; then MNIST="$candidate"; break; fi
  done
fi
if [ -z "$MNIST" ] || ! ls "$MNIST"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "run_local.sh: no MNIST files: pass the folder holding train-images-idx3-ubyte[.gz] as the first argument" >&2
  exit 2
fi
ROUNDS="${ROUNDS:-2}"
WORK="${WORK:-$(mktemp -d -t lightning-fed-deploy-XXXX)}"
PYTHON="${PYTHON:-python}"
echo "federation in $WORK (MNIST from $MNIST, $ROUNDS rounds)"

"$PYTHON" -m lightning_fed.transport.certificates --out "$WORK/certs" --sites alice bob
"$PYTHON" examples/deploy/split_mnist.py --mnist "$MNIST" --out "$WORK/schools" --sites alice bob \
  ${PER_SITE:+--per-site "$PER_SITE"}

PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

SITES=()
for site in alice bob; do
  # each school's certificate folder holds only the CA and its own key pair
  mkdir -p "$WORK/$site-certs"
  cp "$WORK/certs/ca.pem" "$WORK/certs/$site.pem" "$WORK/certs/$site.key" "$WORK/$site-certs/"
  lightning-fed worker --id "$site" --listen 127.0.0.1:0 --certs "$WORK/$site-certs" \
    --data "mnist-train=$WORK/schools/$site" --accept-model lightning_fed.models.MNISTClassifier \
    > "$WORK/$site.out" 2> "$WORK/$site.log" &
  PIDS+=("$!")
done
for site in alice bob; do
  for _ in $(seq 1 240); do
    address="$(sed -n "s/.*listening on \([0-9.]*:[0-9]*\) .*/\1/p" "$WORK/$site.out")"
    [ -n "$address" ] && break
    sleep 0.5
  done
  if [ -z "$address" ]; then echo "school $site did not start; its log:" >&2; cat "$WORK/$site.log" >&2; exit 1; fi
  echo "school $site listening on $address"
  SITES+=(--site "$site=$address")
done

"$PYTHON" examples/deploy/train.py --certs "$WORK/certs" "${SITES[@]}" --mnist-test "$MNIST" --rounds "$ROUNDS"
