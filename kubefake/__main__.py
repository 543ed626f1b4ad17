"""Serve the fake Kubernetes API on its own: python -m kubefake [--port P] [--latency-ms L]

Prints the server URL on the first line of stdout; stops on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal

import kmock

from kubefake.faults import FaultPlan
from kubefake.server import FakeKubernetes


async def serve(args: argparse.Namespace) -> None:
    fake = FakeKubernetes(
        faults=FaultPlan(latency_s=args.latency_ms / 1000, rate=args.fault_rate),
        gpu_capacity=args.gpus,
        validate=not args.no_validate,
        kubelet_interval_s=args.kubelet_interval_s,
        termination_delay_s=args.termination_delay_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with fake, kmock.Server(fake, port=args.port) as server:
        print(str(server.url).rstrip("/"), flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kubefake", description=__doc__)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--no-validate", action="store_true", help="skip schema admission")
    parser.add_argument("--kubelet-interval-s", type=float, default=0.02, help="kubelet tick")
    parser.add_argument(
        "--termination-delay-s", type=float, default=0.05, help="a deleted pod's shutdown time"
    )
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
