#!/usr/bin/env bash
# The GitHub Action's task step (action.yml): submits the task, streams its
# progress into the log, writes task-id, status and output to $GITHUB_OUTPUT
# and a result table to $GITHUB_STEP_SUMMARY, and exits non-zero unless the
# task COMPLETED. Inputs arrive as INPUT_* variables.
set -euo pipefail

fail() { echo "::error title=coderclaw::$*" >&2; exit 2; }

: "${GITHUB_OUTPUT:?GITHUB_OUTPUT is not set: this runs as a GitHub Actions step}"
: "${GITHUB_STEP_SUMMARY:?GITHUB_STEP_SUMMARY is not set: this runs as a GitHub Actions step}"
command -v coderclaw >/dev/null || fail "coderclaw is not installed (the install step should have put it on PATH)"

target=()
if [ -n "${INPUT_SKILL:-}" ] && [ -n "${INPUT_AGENT:-}" ]; then fail "give skill or agent, not both"; fi
if [ -n "${INPUT_SKILL:-}" ]; then target=(--skill "$INPUT_SKILL")
elif [ -n "${INPUT_AGENT:-}" ]; then target=(--agent "$INPUT_AGENT")
else fail "say what to run: the skill or agent input"; fi

input="${INPUT_INPUT:-}"
[ -n "$input" ] || input='{}'
submit=(task submit "${target[@]}" --input "$input" --description "${INPUT_TASK:-}"
  --meta "source=github-actions" --meta "github-run=${GITHUB_REPOSITORY:-}#${GITHUB_RUN_ID:-}/${GITHUB_JOB:-}")

remote=()
case "${INPUT_MODE:-local-only}" in
  local-only) ;;
  remote-enabled)
    [ -n "${INPUT_REMOTE:-}" ] || fail "mode remote-enabled needs the remote input (the server's URL)"
    token="${INPUT_TOKEN:-}"
    if [ -z "$token" ]; then
      # Keyless: the workflow's OIDC ID token, exchanged for a session.
      token=$(coderclaw login --github-actions --audience "${INPUT_AUDIENCE:-coderclaw}" --remote "$INPUT_REMOTE")
    fi
    echo "::add-mask::$token"
    # In the environment, not on command lines other processes can read.
    export CODERCLAW_TOKEN="$token"
    remote=(--remote "$INPUT_REMOTE")
    ;;
  *) fail "mode must be local-only or remote-enabled, not ${INPUT_MODE}";;
esac

# Progress streams into the log as it happens. The task's own messages are
# not workflow commands: they run with commands stopped. A cancelled job's
# SIGINT/SIGTERM reaches coderclaw, which gives the task up.
log=$(mktemp)
resume=$(python3 -c 'import uuid; print(uuid.uuid4().hex)')
echo "::stop-commands::$resume"
set +e
coderclaw "${submit[@]}" "${remote[@]}" --wait 2>&1 | tee "$log"
set -e
echo "::$resume::"
id=$(sed -n 's/^task \([0-9a-f-]*\) submitted$/\1/p' "$log" | head -n 1)
rm -f "$log"
[ -n "$id" ] || fail "the task was not submitted (the log above says why)"
state=$(coderclaw task status "$id" "${remote[@]}" --json)

STATE="$state" python3 - <<'PY'
import json, os, uuid
state = json.loads(os.environ["STATE"])
status = state["status"]
output = json.dumps(state["output"]) if state.get("output") is not None else ""
delimiter = f"coderclaw-{uuid.uuid4()}"
with open(os.environ["GITHUB_OUTPUT"], "a") as f:
    f.write(f"task-id={state['id']}\nstatus={status}\n")
    f.write(f"output<<{delimiter}\n{output}\n{delimiter}\n")
target = state["target"].get("skill") or state["target"].get("agent")
seconds = ""
if state.get("completedAtMs") and state.get("startedAtMs"):
    seconds = f"{(state['completedAtMs'] - state['startedAtMs']) / 1000:.1f} s"
error = state.get("error") or {}
rows = [("Task", state["id"]), ("Runs", target), ("Status", status), ("Time", seconds)]
if error:
    rows.append(("Error", f"`{error.get('code', '')}` {error.get('message', '')}"))
with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
    f.write("### coderclaw task\n\n| | |\n|---|---|\n")
    for k, v in rows:
        cell = str(v).replace("|", "\\|")
        f.write(f"| {k} | {cell} |\n")
    if output:
        shown = output if len(output) <= 65536 else output[:65536] + " …(truncated)"
        f.write(f"\n<details><summary>Output</summary>\n\n```json\n{shown}\n```\n\n</details>\n")
PY

status=$(STATE="$state" python3 -c 'import json,os; print(json.loads(os.environ["STATE"])["status"])')
if [ "$status" != "COMPLETED" ]; then
  echo "::error title=coderclaw::task ended $status"
  exit 1
fi
