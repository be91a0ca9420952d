"""`batchpilot emulator ...`: flags mapped one-to-one onto EmulatorConfig. The main CLI adds a subcommand,
calls `add_arguments` on its parser and awaits `run_from_args` with the parsed namespace."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import DEFAULT_ACCOUNT, DEFAULT_KEY, EmulatorConfig
from .faults import FaultConfig, RequestKind


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--account", default=DEFAULT_ACCOUNT, help="Batch account name (default: %(default)s)"
    )
    parser.add_argument("--key", default=DEFAULT_KEY, help="base64 SharedKey of the account")
    parser.add_argument("--workdir", type=Path, help="where task directories live (default: a temporary dir)")
    parser.add_argument(
        "--allocation-delay-s", type=float, default=0.2, help="seconds before new nodes are idle"
    )
    parser.add_argument(
        "--deletion-delay-s", type=float, default=0.2, help="seconds a pool/job stays deleting"
    )
    parser.add_argument(
        "--simulate",
        metavar="SECONDS_RANGE",
        type=_seconds_range,
        help="run no processes: each task takes a duration in MIN-MAX seconds (or one value), e.g. 0.5-2",
    )
    faults = parser.add_argument_group("fault injection (deterministic under --seed)")
    faults.add_argument("--seed", type=int, default=0, help="seed for every fault decision")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    faults.add_argument("--rate-429", type=float, default=0.0, help="share of requests answered 429")
    faults.add_argument("--retry-after-s", type=int, default=1, help="Retry-After sent with each 429")
    faults.add_argument("--rate-500", type=float, default=0.0, help="share of requests answered 500")
    faults.add_argument(
        "--fault-kinds",
        type=_kinds,
        default=frozenset(),
        help=f"comma-separated request kinds that get 429/500 (default: all); kinds: {_kind_names()}",
    )
    faults.add_argument(
        "--drop-after-apply",
        type=float,
        default=0.0,
        help="share of requests applied, then the connection cut",
    )
    faults.add_argument(
        "--drop-kinds",
        type=_kinds,
        default=frozenset({RequestKind.TASK_ADD_COLLECTION}),
        help="request kinds whose connection may be cut (default: task.addcollection)",
    )
    faults.add_argument(
        "--preempt", type=float, default=0.0, help="share of tasks preempted once while running"
    )
    faults.add_argument(
        "--preempt-after-s", type=float, default=0.2, help="how long a task runs before preemption"
    )
    faults.add_argument(
        "--counts-lag-s", type=float, default=0.0, help="serve task counts up to this many s old"
    )
    faults.add_argument("--fault-budget", type=int, help="at most this many of each fault (default: no cap)")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        account=args.account,
        key=args.key,
        workdir=args.workdir,
        allocation_delay_s=args.allocation_delay_s,
        deletion_delay_s=args.deletion_delay_s,
        simulate_s=args.simulate,
        faults=FaultConfig(
            seed=args.seed,
            latency_ms=args.latency_ms,
            rate_429=args.rate_429,
            retry_after_s=args.retry_after_s,
            rate_500=args.rate_500,
            kinds=args.fault_kinds,
            drop_after_apply=args.drop_after_apply,
            drop_kinds=args.drop_kinds,
            preempt=args.preempt,
            preempt_after_s=args.preempt_after_s,
            counts_lag_s=args.counts_lag_s,
            budget=args.fault_budget,
        ),
    )


async def run_from_args(args: argparse.Namespace) -> None:
    """Serve until cancelled (Ctrl-C). A bad combination of flags raises ConfigError before listening."""
    from .app import serve  # aiohttp's server and the storage SDK: loaded only to serve

    await serve(config_from_args(args))


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or MIN-MAX, got {text!r}") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {text!r}")
    return bounds


def _kinds(text: str) -> frozenset[RequestKind]:
    try:
        return frozenset(RequestKind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown request kind in {text!r}; kinds: {_kind_names()}"
        ) from None


def _kind_names() -> str:
    return ", ".join(kind.value for kind in RequestKind)
