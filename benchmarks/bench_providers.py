"""Messages per second through a GroupRouter against the mock provider server, unbatched and batched.

The mock runs in its own process (uvicorn, httptools/uvloop when installed) so client and server each
get a core of this 2-core machine. Messages are fed in bounded chunks, so memory stays flat however
many are sent. Usage:

    .venv/bin/python benchmarks/bench_providers.py [--messages 20000] [--batch-size 500] [--chunk 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.config import RuntimeConfig  # noqa: E402
from reconciler.loading import SourceFile, load_files  # noqa: E402
from reconciler.providers import GroupRouter, OutboundMessage  # noqa: E402

STATE_YAML = """
apiVersion: herald/v1
kind: Provider
metadata: {name: bench-twilio}
spec:
  type: twilio
  accountSid: AC00000000000000000000000000000009
  authToken: {secretRef: {env: BENCH_TOKEN}}
  from: "+14155550100"
---
apiVersion: herald/v1
kind: Provider
metadata: {name: bench-bulk}
spec:
  type: generic_http
  url: https://bulk.example/v1/batch
  auth: {bearer: {secretRef: {env: BENCH_TOKEN}}}
  globals: {sender: HERALD}
  body: {to: $$To, text: $$Body, reference: $$MessageID}
  batching: {enabled: true, size: BATCH_SIZE, key: messages}
  success: {statusCodes: [200], messageIdPath: "messages.*.id"}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: single}
spec: {default: true, providers: [bench-twilio]}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: bulk}
spec: {providers: [bench-bulk]}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mock(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "mock-provider", "--port", str(port)],
                               cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_mock/stats", timeout=0.5)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("mock provider did not start")


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU of this process, or of `pid` (the mock server) from /proc."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(router: GroupRouter, group: str, total: int, chunk: int, label: str,
              server_pid: int) -> tuple[float, float, float]:
    """(messages/s wall clock, client CPU µs per message, server CPU µs per message)."""
    sent = 0
    started = time.perf_counter()
    client_cpu, server_cpu = cpu_seconds(), cpu_seconds(server_pid)
    for start in range(0, total, chunk):
        messages = [OutboundMessage(f"{label}-{i}", f"+14155{i % 1000000:06d}", f"Hello {i}, your code is {i:06d}")
                    for i in range(start, min(total, start + chunk))]
        results = await router.send(messages, group=group)
        sent += sum(r.status == "sent" for r in results)
    elapsed = time.perf_counter() - started
    if sent != total:
        raise SystemExit(f"{label}: only {sent} of {total} sent")
    client_us = (cpu_seconds() - client_cpu) / total * 1e6
    server_us = (cpu_seconds(server_pid) - server_cpu) / total * 1e6
    return total / elapsed, client_us, server_us


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    os.environ["BENCH_TOKEN"] = "bench-token-value"
    state = load_files([SourceFile("bench.yaml", STATE_YAML.replace("BATCH_SIZE", str(args.batch_size)).encode())])
    assert state.ok, state.diagnostics
    port = free_port()
    mock = start_mock(port)
    url = f"http://127.0.0.1:{port}"
    try:
        config = RuntimeConfig(provider_base_url=url)
        async with GroupRouter(state.state, config, max_concurrency=args.concurrency) as router:
            await run(router, "single", 500, 500, "warmup", mock.pid)
            gc.collect()
            before = rss_mib()
            unbatched, u_client, u_server = await run(router, "single", args.messages, args.chunk, "unbatched",
                                                      mock.pid)
            after_unbatched = rss_mib()
            batched, b_client, b_server = await run(router, "bulk", args.messages * 5, args.chunk * 5, "batched",
                                                    mock.pid)
            after_batched = rss_mib()
        stats = httpx.get(f"{url}/_mock/stats").json()
    finally:
        mock.terminate()
        mock.wait(10)
    bulk = stats["providers"]["bench-bulk"]
    load = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, concurrency {args.concurrency}, "
          f"load average {load:.2f}")
    print(f"unbatched (twilio adapter): {args.messages} messages, {unbatched:,.0f} msg/s; CPU per message: "
          f"client {u_client:.0f} us (one core: {1e6 / u_client:,.0f} msg/s), mock {u_server:.0f} us")
    print(f"batched (generic, {args.batch_size}/request): {args.messages * 5} messages in {bulk['requests']} "
          f"requests, {batched:,.0f} msg/s; CPU per message: client {b_client:.0f} us "
          f"(one core: {1e6 / b_client:,.0f} msg/s), mock {b_server:.0f} us")
    print(f"mock recorded {stats['total'].get('messages', 0)} messages, "
          f"{stats['total'].get('duplicates', 0)} duplicates")
    print(f"client peak RSS: {before:.0f} MiB before, {after_unbatched:.0f} MiB after unbatched, "
          f"{after_batched:.0f} MiB after batched")


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
