"""Clients nobody in this project wrote, against a real `coderclaw serve`.

    transport_clients.py ws   HTTP_URL TOKEN
    transport_clients.py grpc ADDR TOKEN PROTO_DIR

`ws` speaks the WebSocket protocol (docs/websocket.md) with the `websockets`
package; `grpc` generates stubs from runtime.proto with grpcio-tools and
uses grpcio, plus grpcio-health-checking and grpcio-reflection for the
standard services. Each submits team/echo, streams it to COMPLETED, checks
refusals, and prints what it saw as one JSON object.
"""

import asyncio
import importlib
import json
import os
import sys
import tempfile


def ws_main(http_url, token):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    url = http_url.replace("http://", "ws://", 1) + "/v1/ws"
    seen = {}

    async def request(ws, message):
        await ws.send(json.dumps(message))
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == message["id"] and reply["type"] in ("result", "error"):
                return reply

    async def run():
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(url, additional_headers=headers, subprotocols=["coderclaw.v1"]) as ws:
            seen["subprotocol"] = ws.subprotocol
            submitted = await request(
                ws, {"id": "s1", "op": "submit", "task": {"skillId": "team/echo", "input": {"from": "python"}}}
            )
            task_id = submitted["result"]["id"]
            seen["submitted_status"] = submitted["result"]["status"]
            await ws.send(json.dumps({"id": "sub", "op": "subscribe", "taskId": task_id}))
            events = []
            while True:
                m = json.loads(await ws.recv())
                if m["type"] == "event" and m["subscription"] == "sub":
                    events.append(m["event"])
                elif m["type"] == "end" and m["subscription"] == "sub":
                    break
                elif m["type"] == "error":
                    raise SystemExit(f"subscribe refused: {m}")
            seen["statuses"] = [e["status"] for e in events if e["event"] == "status"]
            seen["seqs"] = [e["seq"] for e in events]
            done = await request(ws, {"id": 2, "op": "get", "taskId": task_id})
            seen["output"] = done["result"]["output"]
            # Malformed messages get a typed error and the socket stays usable.
            await ws.send("{not json")
            seen["malformed"] = json.loads(await ws.recv())["error"]["code"]
            unknown = await request(ws, {"id": 3, "op": "launch"})
            seen["unknown_op"] = unknown["error"]["code"]
            missing = await request(ws, {"id": 4, "op": "get", "taskId": "0b9ea3ee-86a1-4a8f-9d0b-7a3f3f3f3f3f"})
            seen["not_found"] = missing["error"]["code"]
            status = await request(ws, {"id": 5, "op": "status"})
            seen["usable_after_errors"] = status["result"]["healthy"]
        # A browser cannot send headers: the token rides as a subprotocol.
        protocols = ["coderclaw.v1", f"coderclaw.bearer.{token}"]
        async with connect(url, subprotocols=protocols) as ws:
            seen["browser_subprotocol"] = ws.subprotocol
            status = await request(ws, {"id": 1, "op": "status"})
            seen["browser_status"] = status["type"]
        # No token: refused before the upgrade.
        try:
            async with connect(url):
                seen["anonymous"] = "upgraded"
        except InvalidStatus as e:
            seen["anonymous"] = e.response.status_code

    asyncio.run(run())
    return seen


def grpc_main(addr, token, proto_dir):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    from grpc_tools import protoc

    out = tempfile.mkdtemp()
    proto = os.path.join(proto_dir, "coderclaw/v1/runtime.proto")
    code = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", proto])
    if code != 0:
        raise SystemExit(f"protoc failed on {proto}: {code}")
    sys.path.insert(0, out)
    pb = importlib.import_module("coderclaw.v1.runtime_pb2")
    rpc = importlib.import_module("coderclaw.v1.runtime_pb2_grpc")

    seen = {}
    auth = [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(addr) as channel:
        stub = rpc.RuntimeStub(channel)
        task = stub.SubmitTask(
            pb.SubmitTaskRequest(skill_id="team/echo", input_json=json.dumps({"from": "python"})), metadata=auth
        )
        seen["submitted_status"] = pb.TaskStatus.Name(task.status)
        events = list(stub.StreamTaskUpdates(pb.TaskRef(task_id=task.id), metadata=auth))
        seen["statuses"] = [
            pb.TaskStatus.Name(e.status) for e in events if e.event == pb.TASK_EVENT_KIND_STATUS
        ]
        seen["seqs"] = [e.seq for e in events]
        done = stub.GetTask(pb.TaskRef(task_id=task.id), metadata=auth)
        seen["output"] = json.loads(done.output_json)
        run = list(
            stub.RunTask(pb.SubmitTaskRequest(skill_id="team/echo", input_json=json.dumps({"run": "python"})), metadata=auth)
        )
        seen["run_kinds"] = [u.WhichOneof("update") for u in run]
        seen["run_output"] = json.loads(run[-1].finished.output_json)
        seen["run_status"] = pb.TaskStatus.Name(run[-1].finished.status)

        def code_of(call):
            try:
                call()
                return "OK"
            except grpc.RpcError as e:
                return e.code().name

        seen["anonymous"] = code_of(lambda: stub.GetStatus(pb.GetStatusRequest()))
        seen["not_found"] = code_of(
            lambda: stub.GetTask(pb.TaskRef(task_id="0b9ea3ee-86a1-4a8f-9d0b-7a3f3f3f3f3f"), metadata=auth)
        )
        seen["bad_input"] = code_of(
            lambda: stub.SubmitTask(pb.SubmitTaskRequest(skill_id="team/echo", input_json="{nope"), metadata=auth)
        )
        seen["usable_after_errors"] = stub.GetStatus(pb.GetStatusRequest(), metadata=auth).healthy
        health = health_pb2_grpc.HealthStub(channel)
        seen["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(
            health.Check(health_pb2.HealthCheckRequest(service="coderclaw.v1.Runtime")).status
        )
        database = ProtoReflectionDescriptorDatabase(channel)
        seen["reflected_services"] = sorted(database.get_services())
        method = database.FindFileContainingSymbol("coderclaw.v1.Runtime")
        seen["reflected_file"] = method.name
    return seen


def main():
    mode = sys.argv[1]
    if mode == "ws":
        seen = ws_main(sys.argv[2], sys.argv[3])
    elif mode == "grpc":
        seen = grpc_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
