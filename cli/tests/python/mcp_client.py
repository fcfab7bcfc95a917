"""Drives coderclaw's MCP server with the official Python MCP SDK (`mcp` on
PyPI), a client this project did not write: over the real binary's stdio
(`coderclaw mcp`) or over Streamable HTTP (`coderclaw serve`, /mcp).

usage: mcp_client.py stdio CODERCLAW WORKSPACE PACKAGE
       mcp_client.py http  CODERCLAW URL TOKEN PACKAGE
(CODERCLAW_HOME in the environment)

Expects team/echo, team/word-count, team/asker, team/spin and
team/shell-exec installed, the last refused by policy (dangerous, no
repository policy); PACKAGE is a signed package this script installs while
connected. Prints what it saw as one JSON object; exits non-zero on the
first expectation not met.
"""

import asyncio
import json
import os
import subprocess
import sys
import time

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def expect(condition, what):
    if not condition:
        print(f"expected: {what}", file=sys.stderr)
        sys.exit(1)


def coderclaw(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, text=True, env=os.environ)
    expect(out.returncode == 0, f"coderclaw {' '.join(args)} succeeds: {out.stderr}")
    return out.stdout


def cancellations(binary):
    return json.loads(coderclaw(binary, "audit", "query", "--action", "task.cancelled", "--json"))


class Agent:
    """What an agent's client does: answers the skill's questions, shows
    progress, notices when the tools changed."""

    def __init__(self):
        self.asked = []
        self.list_changed = 0

    async def elicit(self, context, params):
        self.asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "blue"})

    async def on_message(self, message):
        message = getattr(message, "root", message)
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            self.list_changed += 1


async def exercise(session, agent, binary, package):
    seen = {}
    init = await session.initialize()
    expect(init.server_info.name == "coderclaw", f"server name coderclaw, got {init.server_info}")
    seen["protocol"] = str(init.protocol_version)

    tools = (await session.list_tools()).tools
    names = sorted(t.name for t in tools)
    skills = [n for n in names if n.startswith("team_")]
    expect(
        skills == ["team_asker", "team_echo", "team_spin", "team_word-count"],
        f"the allowed skills only (no shell-exec), got {names}",
    )
    expect("coderclaw_policy_check" in names and "coderclaw_task_status" in names, f"the helper tools: {names}")
    word_count = next(t for t in tools if t.name == "team_word-count")
    seen["tools"] = names
    seen["word_count_schema"] = word_count.input_schema
    seen["word_count_output_schema"] = word_count.output_schema

    counted = await session.call_tool("team_word-count", {})
    expect(not counted.is_error, f"word-count runs: {counted}")
    expect(counted.structured_content["files"] == 1, f"one file counted: {counted.structured_content}")
    seen["counted"] = counted.structured_content

    refused = await session.call_tool("team_shell-exec", {})
    expect(refused.is_error, f"shell-exec refused: {refused}")
    seen["refused"] = " ".join(c.text for c in refused.content)
    expect("denied" in seen["refused"], f"the refusal says why: {seen['refused']}")

    # A question the skill asks reaches the user; its progress is shown.
    progress = []

    async def on_progress(value, total, message):
        progress.append([value, total, message])

    asked = await session.call_tool("team_asker", {"ask": "colour?"}, progress_callback=on_progress)
    expect(not asked.is_error, f"the asker completes: {asked}")
    expect(asked.structured_content == {"answer": "blue"}, f"the answer reached the skill: {asked}")
    expect(agent.asked == ["colour?"], f"the skill's question was asked: {agent.asked}")
    expect(progress and progress[0][0] == 0.5, f"progress notifications: {progress}")
    seen["progress"] = progress

    # Abandoning a call cancels its task within a second.
    before = len(cancellations(binary))
    try:
        await session.call_tool("team_spin", {}, read_timeout_seconds=0.5)
        expect(False, "the spinning skill never returns")
    except Exception:
        pass
    abandoned = time.monotonic()
    while len(cancellations(binary)) == before:
        expect(time.monotonic() - abandoned < 1.0, "the abandoned call's task is cancelled within 1 s")
        await asyncio.sleep(0.02)
    seen["cancelled_within_s"] = round(time.monotonic() - abandoned, 3)

    # An install while connected: the client is told, and the tool is there.
    coderclaw(binary, "skill", "install", package)
    installed = time.monotonic()
    while agent.list_changed == 0:
        expect(time.monotonic() - installed < 3.0, "notifications/tools/list_changed after an install")
        await asyncio.sleep(0.02)
    after = sorted(t.name for t in (await session.list_tools()).tools)
    expect("team_extra" in after, f"the installed skill is listed: {after}")
    seen["after_install"] = after
    return seen


async def main(argv):
    agent = Agent()
    options = dict(elicitation_callback=agent.elicit, message_handler=agent.on_message)
    if argv[0] == "stdio":
        binary, workspace, package = argv[1:4]
        params = StdioServerParameters(
            command=binary, args=["mcp", "--workspace", workspace], env={"CODERCLAW_HOME": os.environ["CODERCLAW_HOME"]}
        )
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1], **options) as session:
                seen = await exercise(session, agent, binary, package)
    else:
        binary, url, token, package = argv[1:5]
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1], **options) as session:
                    seen = await exercise(session, agent, binary, package)
    print(json.dumps(seen))


asyncio.run(main(sys.argv[1:]))
