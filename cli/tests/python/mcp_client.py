"""Drives `coderclaw mcp` with the official Python MCP SDK (`mcp` on PyPI),
a client this project did not write, over the real binary's stdio.

usage: mcp_client.py CODERCLAW WORKSPACE   (CODERCLAW_HOME in the environment)

Expects team/echo, team/word-count and team/shell-exec installed, the last
refused by policy (dangerous, no repository policy). Prints what it saw as
one JSON object; exits non-zero on the first expectation not met.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def expect(condition, what):
    if not condition:
        print(f"expected: {what}", file=sys.stderr)
        sys.exit(1)


async def main(binary, workspace):
    params = StdioServerParameters(
        command=binary, args=["mcp", "--workspace", workspace], env={"CODERCLAW_HOME": os.environ["CODERCLAW_HOME"]}
    )
    async with stdio_client(params) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            init = await session.initialize()
            expect(init.server_info.name == "coderclaw", f"server name coderclaw, got {init.server_info}")
            tools = (await session.list_tools()).tools
            names = sorted(t.name for t in tools)
            expect(names == ["team_echo", "team_word-count"], f"the allowed tools only, got {names}")
            word_count = next(t for t in tools if t.name == "team_word-count")
            counted = await session.call_tool("team_word-count", {})
            expect(not counted.is_error, f"word-count runs: {counted}")
            expect(counted.structured_content["files"] == 1, f"one file counted: {counted.structured_content}")
            refused = await session.call_tool("team_shell-exec", {})
            expect(refused.is_error, f"shell-exec refused: {refused}")
            text = " ".join(c.text for c in refused.content)
            expect("denied" in text, f"the refusal says why: {text}")
            print(
                json.dumps(
                    {
                        "protocol": str(init.protocol_version),
                        "tools": names,
                        "word_count_schema": word_count.input_schema,
                        "counted": counted.structured_content,
                        "refused": text,
                    }
                )
            )


asyncio.run(main(sys.argv[1], sys.argv[2]))
