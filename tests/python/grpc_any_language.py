"""aidos from Python over gRPC, with no Rust involved (tests/grpc_clients.rs runs this).

1. Generates Python stubs from proto/ with grpcio-tools (the public API, as a user would).
2. Submits a `process` job with them, watches it to completion and reads its logs.
3. Checks grpc.health.v1 and server reflection on the scheduler, a serving replica and a gateway with the grpcio clients
   (grpcio-health-checking, grpcio-reflection): no .proto file needed for those.

Usage: grpc_any_language.py PROTO_DIR OUT_DIR SCHEDULER_ADDR REPLICA_GRPC_ADDR GATEWAY_GRPC_ADDR
(token in AIDOS_TOKEN)
Exits non-zero with a message on the first failed check.
"""

import os
import subprocess
import sys
import time

proto_dir, out_dir, scheduler, replica, gateway = sys.argv[1:6]
token = os.environ["AIDOS_TOKEN"]

# ---- 1. stubs from proto/ ----------------------------------------------------------------------------------------
os.makedirs(out_dir, exist_ok=True)
files = sorted(
    os.path.join("aidos/v1", f) for f in os.listdir(os.path.join(proto_dir, "aidos/v1")) if f.endswith(".proto")
)
subprocess.run(
    [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out_dir}",
     f"--grpc_python_out={out_dir}", *files],
    check=True,
)
sys.path.insert(0, out_dir)

import grpc  # noqa: E402
from aidos.v1 import common_pb2, job_pb2, job_pb2_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase,
)

auth = [("authorization", f"Bearer {token}")]

# ---- 2. a process job, watched to the end, and its logs ----------------------------------------------------------
with grpc.insecure_channel(scheduler) as ch:
    jobs = job_pb2_grpc.JobServiceStub(ch)
    spec = common_pb2.JobSpec(
        name="from-python",
        kind=common_pb2.JOB_KIND_PROCESS,
        resources=common_pb2.Resources(cpu_millis=100, memory_bytes=64 << 20),
        process=common_pb2.ProcessSpec(executable="sh", args=["-c", "echo hello from python; echo done >&2"]),
    )
    job_id = jobs.Submit(job_pb2.SubmitRequest(spec=spec), metadata=auth, timeout=30).job_id
    print(f"submitted {job_id}")
    final = None
    deadline = time.time() + 120
    for job in jobs.Watch(job_pb2.WatchJobRequest(job_id=job_id), metadata=auth, timeout=120):
        state = common_pb2.JobState.Name(job.state)
        if state in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            final = state
            break
        assert time.time() < deadline, "the watch did not end"
    assert final == "JOB_STATE_SUCCEEDED", f"{job_id} ended {final}"
    out = b"".join(c.data for c in jobs.Logs(job_pb2.LogsRequest(job_id=job_id), metadata=auth, timeout=30))
    assert b"hello from python" in out and b"done" in out, f"logs of {job_id}: {out!r}"
    print(f"{job_id} succeeded; logs: {out!r}")

    # A refused call is a proper gRPC status, not a hang or a transport error.
    try:
        jobs.Get(job_pb2.GetJobRequest(job_id="job-nosuch"), metadata=auth, timeout=10)
        raise AssertionError("a missing job was found")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    try:
        jobs.Get(job_pb2.GetJobRequest(job_id=job_id), timeout=10)
        raise AssertionError("a call without a token was answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e


# ---- 3. health and reflection, on the scheduler and on a replica --------------------------------------------------
def check_standard_services(addr, must_list, service_to_describe, method):
    with grpc.insecure_channel(addr) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", service_to_describe):
            r = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, f"{addr} health of {name!r}: {r}"
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        missing = set(must_list) - services
        assert not missing, f"{addr} reflection lists {sorted(services)}; missing {sorted(missing)}"
        svc = db.FindFileContainingSymbol(service_to_describe)
        described = [m.name for s in svc.service for m in s.method]
        assert method in described, f"{addr}: {service_to_describe} described as {described}"
        print(f"{addr}: health SERVING; reflection lists {len(services)} services; {service_to_describe}.{method} described")


check_standard_services(
    scheduler,
    ["aidos.v1.JobService", "aidos.v1.ModelService", "grpc.health.v1.Health"],
    "aidos.v1.JobService",
    "Submit",
)
check_standard_services(
    replica,
    ["inference.GRPCInferenceService", "grpc.health.v1.Health"],
    "inference.GRPCInferenceService",
    "ModelInfer",
)
check_standard_services(
    gateway,
    ["inference.GRPCInferenceService", "grpc.health.v1.Health"],
    "inference.GRPCInferenceService",
    "ModelInfer",
)
print("grpc from python: every check passed")
