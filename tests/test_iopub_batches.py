"""iopub batches end to end: a real kernel streams output through a real gateway, paced and not.

With ``--iopub-batch-ms`` the gateway leaves a streaming kernel's iopub unread
for a moment after each read and sends what came meanwhile in one write; a
client must see exactly what it would see without it: every output, in order,
then ``idle``, in both formats -- and executions that print little are never
held.  What the gateway saves is measured in benchmarks/ (never timed here).
"""
import pytest

from conftest import TOKEN
from support import GatewayProcess, stdout_of

STREAM = ("from IPython.display import display\n"
          "for i in range(3000):\n"
          "    display({'text/plain': str(i)}, raw=True)\n"
          "print('done')\n")


@pytest.fixture(scope="module", params=["0", "20"], ids=["unpaced", "paced"])
def gateway(request):
    process = GatewayProcess("--iopub-batch-ms", request.param, token=TOKEN).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("v1", [False, True], ids=["legacy", "v1"])
def test_a_stream_of_outputs_arrives_whole_and_in_order(gateway, v1):
    kernel = gateway.start_kernel()
    try:
        with gateway.connect(kernel["id"], v1=v1) as client, gateway.connect(kernel["id"], v1=not v1) as other:
            messages = client.run(STREAM, timeout=120)
            shown = [m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "display_data"]
            assert shown == [str(i) for i in range(3000)]
            assert stdout_of(messages) == "done\n"
            iopub = [m for m in messages if m["channel"] == "iopub"]
            assert iopub[-1]["msg_type"] == "status" and iopub[-1]["content"]["execution_state"] == "idle"
            # the other client (the other format) got the same stream, from the same batches
            msg_id, theirs = messages[0]["parent_header"]["msg_id"], []
            for _ in range(10_000):
                message = other.recv(60)
                if message["parent_header"].get("msg_id") != msg_id:
                    continue
                if message["msg_type"] == "display_data":
                    theirs.append(message["content"]["data"]["text/plain"])
                if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                    break
            assert theirs == shown
            # and the next, ordinary executions are answered as usual
            for n in range(20):
                assert stdout_of(client.run(f"print({n})")) == f"{n}\n"
    finally:
        gateway.request("DELETE", f"/api/kernels/{kernel['id']}")
