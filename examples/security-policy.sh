#!/usr/bin/env bash
# A walk through the security policy, one layer at a time, on a fresh state directory. Each step
# changes one thing and asks `coderclaw policy check` what it decides now (nothing runs, exit 0
# allowed, 3 denied), then checks the answer: the reader sees every layer take effect.
#
#   roles          (config.yaml: built-in and custom roles, who has which permission)
#   dangerous      (a skill that asks for `shell` needs a policy entry naming it)
#   repository     (<workspace>/.coderClaw/security.yaml: which roles may run which skill)
#   device trust   (enforceTrust + minimumTrustLevel: untrusted machines are refused)
#   organisation   ($CODERCLAW_HOME/org-policy.yaml: denied skills, whatever the rest says)
#   a broken file  (names file, line and key; the last good version stays in force)
#   sessions       (a real refused run, and its record in the audit log)
#
# Usage: examples/security-policy.sh SKILLS_WASM_DIR
#   SKILLS_WASM_DIR holds word_count.wasm and shell_exec.wasm (built by `cargo test`, under
#   $CARGO_TARGET_DIR/wasm-guests/wasm32-wasip2/release). Run from the repository root.
# Env:   CODERCLAW  the binary (default: coderclaw on PATH)

set -euo pipefail

wasm=$(realpath "${1:?usage: security-policy.sh SKILLS_WASM_DIR}")
cc=${CODERCLAW:-coderclaw}
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CODERCLAW_HOME="$work/home"
mkdir -m 700 "$CODERCLAW_HOME"
repo="$work/repo"
mkdir -p "$repo/.coderClaw"

step() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'security-policy: %s\n' "$*" >&2; exit 1; }
# expect allowed|denied SKILL [what-if flags...]: shows the decision, checks it.
expect() {
  local want=$1 skill=$2 code=0
  shift 2
  "$cc" policy check --skill "$skill" --workspace "$repo" "$@" >"$work/check.txt" || code=$?
  sed 's/^/    /' "$work/check.txt" | head -8 >&2
  case "$want:$code" in
    allowed:0 | denied:3) ;;
    *) fail "expected $skill to be $want ($*), got exit $code" ;;
  esac
}
# says TEXT: the last decision's output names TEXT (a reason code, a file).
says() { grep -q -- "$1" "$work/check.txt" || fail "the decision does not say '$1'"; }

step "Setup: a publisher key trusted for 'team', two signed skills installed"
"$cc" key generate --name team-key >/dev/null
"$cc" trust add team "$("$cc" key export-public team-key)" >/dev/null
for skill in word-count shell-exec; do
  "$cc" skill sign "$wasm/${skill//-/_}.wasm" --key team-key --manifest "$root/skills/$skill/skill.toml" \
    --out "$work/$skill.ccpkg" >/dev/null
  "$cc" skill install "$work/$skill.ccpkg" >/dev/null
done

step "Roles: you act as the local user with security.defaultRoles (developer) on this trusted machine"
expect allowed team/word-count
step "... a readonly role has no skill:execute"
expect denied team/word-count --role readonly
says role

step "Dangerous: shell-exec asks for shell (git, ls), so no role runs it until a policy names it"
expect denied team/shell-exec
says dangerous

step "Repository policy: this repository lets developers run shell-exec, nobody else"
cat >"$repo/.coderClaw/security.yaml" <<'EOF'
skillPolicies:
  - skillId: shell-exec
    dangerous: true
    requiredPermissions: [skill:execute]
    allowedRoles: [developer]
EOF
expect allowed team/shell-exec

step "Custom roles (config.yaml): an 'auditor' may run skills, but is not a developer"
cat >"$CODERCLAW_HOME/config.yaml" <<'EOF'
roles:
  auditor:
    inherits: readonly
    additionalPermissions: [task:submit, skill:execute]
EOF
expect allowed team/word-count --role auditor
expect denied team/shell-exec --role auditor
says role
step "... admin:all passes role checks (but not denied skills or device trust, below)"
expect allowed team/shell-exec --role admin

step "Device trust: the repository demands verified devices; an untrusted machine is refused"
cat >>"$repo/.coderClaw/security.yaml" <<'EOF'
enforceTrust: true
minimumTrustLevel: verified
EOF
expect denied team/word-count --device-trust untrusted
says device-trust
expect allowed team/word-count --device-trust verified

step "Organisation policy: a denied skill is refused for everyone, admin included"
cat >"$CODERCLAW_HOME/org-policy.yaml" <<'EOF'
organizationPolicy:
  deniedSkills: [word-count]
EOF
expect denied team/word-count --role admin
says org
rm "$CODERCLAW_HOME/org-policy.yaml"
expect allowed team/word-count

step "A broken edit: the error names file, line and key; the last good version stays in force"
cp "$repo/.coderClaw/security.yaml" "$work/good.yaml"
printf 'skillPolicies:\n  - skillId: shell-exec\n    alowedRoles: [readonly]\n' >"$repo/.coderClaw/security.yaml"
expect allowed team/shell-exec
says "security.yaml"
cp "$work/good.yaml" "$repo/.coderClaw/security.yaml"

step "Sessions: with requireAuth every command needs one; a readonly user's run is refused and audited"
"$cc" user add bob --role readonly --password-stdin <<<"bob's password" >/dev/null
bob=$(printf "bob's password" | "$cc" login --user bob --password-stdin)
cp "$CODERCLAW_HOME/config.yaml" "$work/config.yaml"
printf 'security:\n  requireAuth: true\n' >>"$CODERCLAW_HOME/config.yaml"
if "$cc" skill run team/word-count --workspace "$repo" >/dev/null 2>"$work/run.err"; then
  fail "a run without a session was allowed under requireAuth"
fi
sed 's/^/    /' "$work/run.err" | head -2 >&2
if "$cc" skill run team/word-count --workspace "$repo" --session "$bob" >/dev/null 2>"$work/run.err"; then
  fail "a readonly session ran a skill"
fi
sed 's/^/    /' "$work/run.err" | head -2 >&2
# Back to the owner acting without a session, who may read the audit log.
cp "$work/config.yaml" "$CODERCLAW_HOME/config.yaml"
"$cc" audit query --action skill.execute --result denied --json >"$work/audit.json"
grep -q '"bob"' "$work/audit.json" || fail "bob's refused run is not in the audit log"
echo "    audit: bob's refused run is recorded" >&2
"$cc" audit verify >/dev/null

echo "security policy walk-through: every layer decided as expected" >&2
