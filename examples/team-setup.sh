#!/usr/bin/env bash
# A team's coderclaw, set up from nothing on this machine's loopback, end to end:
#
#   1. an administrator runs the team registry: a namespace, its admin key, a publish token;
#   2. a publisher signs a skill with their own key (authorised on the namespace) and publishes it;
#   3. the administrator signs and publishes the organisation policy (required and denied skills);
#   4. the team server trusts the publisher's key, installs from the registry, accepts the admin's
#      policy, gets users (a developer, a CI bot with an API token) and a named workspace, and serves;
#   5. the developer logs in over the network and runs the skill on a snapshot of their checkout;
#   6. the CI bot logs in with its API token and runs on the server's workspace... and is refused,
#      because the built-in `ci` role invokes agents, not skills directly (README, "CI");
#   7. the server's audit log verifies.
#
# Every step is a real command against real processes; the script stops at the first surprise.
#
# Usage: examples/team-setup.sh COMPONENT.wasm SKILL.toml
#   e.g. examples/team-setup.sh target/wasm-guests/wasm32-wasip2/release/word_count.wasm skills/word-count/skill.toml
# Env:   CODERCLAW  the binary (default: coderclaw on PATH)

set -euo pipefail

component=$(realpath "${1:?usage: team-setup.sh COMPONENT.wasm SKILL.toml}")
manifest=$(realpath "${2:?usage: team-setup.sh COMPONENT.wasm SKILL.toml}")
cc=${CODERCLAW:-coderclaw}
skill_id=$(sed -n 's/^id = "\(.*\)"$/\1/p' "$manifest" | head -1)
namespace=${skill_id%%/*}
skill_name=${skill_id#*/}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'team-setup: %s\n' "$*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  fail "nothing listens on 127.0.0.1:$1"
}
# Each person has their own state directory (keys, trust store, sessions).
as() { local who=$1; shift; CODERCLAW_HOME="$work/$who" "$cc" "$@"; }
mkdir -m 700 "$work/admin" "$work/publisher" "$work/server" "$work/developer" "$work/ci"

step "1. The administrator runs the registry for namespace '$namespace'"
reg_port=$(free_port)
registry="http://127.0.0.1:$reg_port"
# Not through `as`: $! must be the server itself, so that cleanup stops it.
CODERCLAW_HOME="$work/admin" "$cc" registry serve --data "$work/registry" --listen "127.0.0.1:$reg_port" \
  >"$work/registry.log" 2>&1 &
pids+=($!)
wait_for_port "$reg_port"
as admin key generate --name team-admin >/dev/null
admin_key=$(as admin key export-public team-admin)
as admin registry namespace create "$namespace" --owner alice --data "$work/registry"
as admin registry key add "$namespace" "$admin_key" --admin --data "$work/registry"
publish_token=$(as admin registry token create "$namespace" --scope publish --expires 1d --data "$work/registry")

step "2. The publisher signs $skill_id with their own key and publishes it"
as publisher key generate --name team-signer >/dev/null
signer_key=$(as publisher key export-public team-signer)
as admin registry key add "$namespace" "$signer_key" --data "$work/registry"
as publisher skill sign "$component" --key team-signer --manifest "$manifest" --out "$work/$skill_name.ccpkg" >/dev/null
as publisher skill publish "$work/$skill_name.ccpkg" --registry "$registry" --token "$publish_token"

step "3. The administrator signs the organisation policy with the admin key and publishes it"
cat >"$work/org-policy.yaml" <<EOF
organizationPolicy:
  requiredSkills: [$skill_name]
  deniedSkills: [crypto-miner]
EOF
as admin registry policy publish "$namespace" --file "$work/org-policy.yaml" --key team-admin \
  --registry "$registry" --token "$publish_token"

step "4. The team server: trust, install, policy, users, a workspace; then serve"
checkout="$work/srv-checkout"
mkdir -p "$checkout" && printf 'the server checkout\n' >"$checkout/README"
cat >"$work/server/config.yaml" <<EOF
registries:
  team-registry:
    url: $registry
    namespace-keys:
      $namespace: ["$admin_key"]   # may sign the organisation policy; packages are checked against trust
workspaces:
  main:
    path: $checkout
    roles: [developer, ci]
EOF
as server trust add "$namespace" "$signer_key"
as server skill install "$skill_id" --registry team-registry --workspace "$work/server"
as server registry sync --registry team-registry
as server status | grep -q "missing" && fail "the server misses an organisation-required skill"
printf 'alice password\n' | as server user add alice --role developer --password-stdin
as server user add ci-bot --role ci
ci_api_token=$(as server user token ci-bot --expires 1d)
srv_port=$(free_port)
server="http://127.0.0.1:$srv_port"
CODERCLAW_HOME="$work/server" "$cc" serve --listen "127.0.0.1:$srv_port" --workspace "$work/server" \
  >"$work/serve.log" 2>&1 &
pids+=($!)
wait_for_port "$srv_port"

step "5. The developer logs in over the network and runs $skill_id on a snapshot of their checkout"
mine="$work/alice-checkout"
mkdir -p "$mine" && printf 'one two three\n' >"$mine/notes.txt" && printf 'build/\n' >"$mine/.gitignore"
mkdir -p "$mine/build" && printf 'not sent\n' >"$mine/build/out.txt"
alice=$(printf 'alice password' | as developer login --remote "$server" --user alice --password-stdin)
as developer task submit --skill "$skill_id" --remote "$server" --token "$alice" \
  --workspace-upload --workspace "$mine" --wait --json >"$work/alice-task.json"
grep -q '"COMPLETED"' "$work/alice-task.json" || fail "the developer's task did not complete: $(cat "$work/alice-task.json")"
grep -q 'build/out.txt' "$work/alice-task.json" && fail "an ignored file was uploaded"
as developer task submit --skill "$skill_id" --remote "$server" --token "$alice" --server-workspace main --wait >/dev/null

step "6. The CI bot logs in with its API token; the ci role may not run skills directly"
ci=$(printf '%s' "$ci_api_token" | as ci login --remote "$server" --user ci-bot --token-stdin)
if as ci task submit --skill "$skill_id" --remote "$server" --token "$ci" --server-workspace main 2>"$work/ci.err"; then
  fail "a ci session ran a skill directly"
fi
grep -q "skill:execute" "$work/ci.err" || fail "the refusal does not name the missing permission: $(cat "$work/ci.err")"
echo "refused as expected: $(head -1 "$work/ci.err")" >&2

step "7. The server's audit log verifies"
kill "${pids[-1]}" && wait "${pids[-1]}" 2>/dev/null || true
as server audit verify

echo "team setup: registry $registry, namespace $namespace, $skill_id published, installed and run" >&2
