"""`batchpilot emulator ...`: flags mapped one-to-one onto EmulatorConfig. The main CLI adds a subcommand,
calls `add_arguments` on its parser and awaits `run_from_args` with the parsed namespace."""

from __future__ import annotations

import argparse
import base64
import binascii
import errno
import math
import os
from pathlib import Path

import structlog

from ..errors import ConfigError
from ..files import read_small_file
from .config import DEFAULT_ACCOUNT, DEFAULT_KEY, EmulatorConfig
from .faults import FaultConfig, OutageMode, RequestKind
from .images import DEFAULT_IMAGES, load_images

log = structlog.get_logger(__name__)

# Where the emulator's key is read from when no file is given (never from the command line by default).
KEY_ENV = "BATCHPILOT_EMULATOR_KEY"
_MAX_KEY_FILE_BYTES = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=0, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--account", default=DEFAULT_ACCOUNT, help="Batch account name (default: %(default)s)"
    )
    parser.add_argument(
        "--key-file", type=Path, metavar="FILE",
        help=f"a file holding the account's base64 SharedKey (default: ${KEY_ENV}, else the emulator's "
        "published development key)",
    )  # fmt: skip
    parser.add_argument(
        "--key", help=f"the key itself: visible to every user in `ps`; prefer --key-file or ${KEY_ENV}"
    )
    parser.add_argument("--workdir", type=Path, help="where task directories live (default: a temporary dir)")
    parser.add_argument(
        "--allocation-delay-s", type=float, default=0.2, help="seconds before new nodes are idle"
    )
    parser.add_argument(
        "--deletion-delay-s", type=float, default=0.2, help="seconds a pool/job stays deleting"
    )
    parser.add_argument(
        "--scheduling-delay-s",
        type=float,
        default=0.2,
        help="seconds a task just added stays active before a node may take it",
    )
    parser.add_argument(
        "--simulate",
        metavar="SECONDS_RANGE",
        type=_seconds_range,
        help="run no processes: each task takes a duration in MIN-MAX seconds (or one value), e.g. 0.5-2",
    )
    parser.add_argument(
        "--supported-images", type=Path, metavar="FILE",
        help="what List Supported Images answers: a JSON file holding the service's answer ({\"value\": "
        "[...]}) or a list of its entries; pools whose node agent is not listed or is past its "
        "batchSupportEndOfLife are refused (default: a built-in list where Ubuntu 20.04 has ended)",
    )  # fmt: skip
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
        "--preempt", type=float, default=0.0, help="share of tasks on spot nodes preempted once while running"
    )
    faults.add_argument(
        "--preempt-after-s", type=float, default=0.2, help="how long a task runs before preemption"
    )
    faults.add_argument(
        "--counts-lag-s", type=float, default=0.0, help="serve task counts up to this many s old"
    )
    faults.add_argument("--fault-budget", type=int, help="at most this many of each fault (default: no cap)")
    faults.add_argument(
        "--outage-after-s", type=float, metavar="T",
        help="start an outage T seconds after the first task-add request (with --outage-s)",
    )  # fmt: skip
    faults.add_argument(
        "--outage-s", type=float, default=0.0, metavar="D",
        help="how long the outage lasts, in seconds; it may outlast any client deadline (e.g. 3600)",
    )  # fmt: skip
    faults.add_argument(
        "--outage-kinds",
        type=_kinds,
        default=FaultConfig().outage_kinds,
        help="request kinds that fail during the outage (default: task.list,job.taskcounts,task.get)",
    )
    faults.add_argument(
        "--outage-mode", type=OutageMode, choices=list(OutageMode), default=OutageMode.SERVER_ERROR,
        help="500: answer 500 with a Batch error body; drop: close the connection unanswered (default: 500)",
    )  # fmt: skip
    faults.add_argument(
        "--sas-clock-ahead-s", type=float, metavar="S",
        help="nodes check the expiry of each SAS they stage inputs or outputs with against their clock "
        "plus S seconds and refuse an expired one as Storage does (403 AuthenticationFailed), failing the "
        "task: a task that ran or queued S seconds longer (default: no check)",
    )  # fmt: skip
    quotas = parser.add_argument_group("account quotas (default: none)")
    quotas.add_argument(
        "--pool-quota", type=int, metavar="N",
        help="pools the account may have; one more is refused with 409 PoolQuotaReached",
    )  # fmt: skip
    quotas.add_argument(
        "--job-quota", type=int, metavar="N",
        help="jobs not completed the account may have; one more is refused with 409 "
        "ActiveJobAndScheduleQuotaReached",
    )  # fmt: skip
    quotas.add_argument(
        "--core-quota", type=int, metavar="N",
        help="dedicated cores (from the VM size's name, e.g. 4 for Standard_D4s_v3, else 1 per node); a pool "
        "gets the nodes that fit and the resize error AccountCoreQuotaReached",
    )  # fmt: skip
    quotas.add_argument(
        "--spot-core-quota", type=int, metavar="N",
        help="the same for spot nodes, with the resize error AccountLowPriorityCoreQuotaReached",
    )  # fmt: skip


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        account=args.account,
        key=_key(args.key, args.key_file),
        workdir=args.workdir,
        allocation_delay_s=args.allocation_delay_s,
        deletion_delay_s=args.deletion_delay_s,
        scheduling_delay_s=args.scheduling_delay_s,
        simulate_s=args.simulate,
        supported_images=load_images(args.supported_images) if args.supported_images else DEFAULT_IMAGES,
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
            pool_quota=args.pool_quota,
            job_quota=args.job_quota,
            core_quota=args.core_quota,
            spot_core_quota=args.spot_core_quota,
            outage_after_s=args.outage_after_s,
            outage_s=args.outage_s,
            outage_kinds=args.outage_kinds,
            outage_mode=args.outage_mode,
            sas_clock_ahead_s=args.sas_clock_ahead_s,
        ),
    )


def _port(text: str) -> int:
    """A TCP port, 0..65535 (argparse's one-line refusal otherwise)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: 0 to 65535")
    return port


async def run_from_args(args: argparse.Namespace) -> None:
    """Serve until cancelled (Ctrl-C). A bad combination of flags raises ConfigError before listening."""
    from .app import serve  # aiohttp's server and the storage SDK: loaded only to serve

    await serve(config_from_args(args))


def _key(given: str | None, key_file: Path | None) -> str:
    """The account key: from --key-file, else --key (with a warning: command lines are public), else
    $BATCHPILOT_EMULATOR_KEY, else the published development key. A real account's key in
    $AZURE_BATCH_ACCESS_KEY is never taken: it must not become an emulator's. ConfigError (one line) when
    the key is not base64 or the file cannot be read."""
    if key_file is not None and given is not None:
        raise ConfigError("give the emulator's key once: --key-file or --key, not both")
    if key_file is not None:
        try:
            # Regular files only, read no further than the limit: a FIFO or a device says its size is 0.
            key = read_small_file(key_file, _MAX_KEY_FILE_BYTES).decode("utf-8").strip()
        except OSError as exc:
            if exc.errno == errno.EFBIG:
                raise ConfigError(
                    f"{key_file} is too large to be a key file (at most {_MAX_KEY_FILE_BYTES} bytes)"
                ) from None
            raise ConfigError(f"cannot read the key file {key_file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(f"cannot read the key file {key_file}: {reason}") from None
        source = str(key_file)
    elif given is not None:
        log.warning("emulator.key_on_command_line", fix=f"use --key-file or ${KEY_ENV}: `ps` shows --key")
        key, source = given, "--key"
    elif os.environ.get(KEY_ENV):
        key, source = os.environ[KEY_ENV].strip(), f"${KEY_ENV}"
    else:
        return DEFAULT_KEY
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"the emulator's key from {source} is not base64; give the account key as Azure does"
        ) from None
    if not key:
        raise ConfigError(f"the emulator's key from {source} is empty")
    return key


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or MIN-MAX, got {text!r}") from None
    if not 0 <= bounds[0] <= bounds[1] < math.inf:
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
