"""The program a site runs: ``python -m lightning_fed.transport.worker_main`` (``lightning-fed worker``).

It loads the site's datasets from the site's disk (``--data NAME=PATH`` for MNIST folders, ``--config FILE`` for
anything else, see :mod:`.site_data`), puts them in one worker with the site's policy (``--policy strict``, the
default), and serves it over gRPC with mutual TLS (``--certs DIR`` or ``--cert/--key/--ca``) until SIGTERM or
SIGINT. Plaintext needs ``--insecure`` and a loopback address. Once listening it prints one line and flushes it::

    lightning-fed worker 'alice' listening on 127.0.0.1:50123 (mutual TLS)

Errors in the configuration print one line on stderr and exit with status 2.

Example:
    >>> main(["--id", "alice", "--listen", "127.0.0.1:0"])
    2
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from lightning_fed.exceptions import LightningFedError
from lightning_fed.transport.secagg import SEEDED_FLAG
from lightning_fed.transport.server import DEFAULT_MAX_STORED_BYTES, READ_TIMEOUT_S, SiteServer, SiteWorker
from lightning_fed.transport.site_data import load_config, parse_data_flag, specs_from_config
from lightning_fed.transport.tls import load_credentials, split_address
from lightning_fed.transport.training import load_class
from lightning_fed.transport.wire import MIB, message_limit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-fed worker",
        description="Serve this site's worker: its own datasets, under its own policy, over gRPC with mutual TLS.",
    )
    parser.add_argument("--id", required=True, help="this site's id (the common name of its certificate)")
    parser.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT to listen on; port 0 picks one")
    parser.add_argument("--certs", help="certificate folder: ca.pem, <id>.pem, <id>.key")
    parser.add_argument("--cert", help="this site's certificate (PEM); overrides --certs")
    parser.add_argument("--key", help="this site's private key (PEM); overrides --certs")
    parser.add_argument("--ca", help="the federation's CA certificate (PEM); overrides --certs")
    parser.add_argument("--insecure", action="store_true", help="plaintext, without TLS (loopback tests only)")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                        help="serve the MNIST folder PATH (training split) as dataset NAME; repeatable")  # fmt: skip
    parser.add_argument("--config", help="a JSON (or TOML) file naming the site's datasets (see docs/deployment.md)")
    parser.add_argument("--policy", choices=("strict", "open"), default="strict",
                        help="what may leave this site: 'strict' (default: its data never does) or 'open'")  # fmt: skip
    parser.add_argument("--max-stored-mb", type=float, default=DEFAULT_MAX_STORED_BYTES / MIB,
                        help="most the server's objects at this site (what it sends, what its commands make) may "
                             "hold, in MiB (default 1024; the site's own datasets do not count)")  # fmt: skip
    parser.add_argument("--max-message-mb", type=float, default=64.0,
                        help="largest message, in MiB (default 64; at least 1)")  # fmt: skip
    parser.add_argument("--read-timeout", type=float, default=READ_TIMEOUT_S,
                        help="seconds a peer has to send a whole request before its stream is cancelled (default "
                             f"{READ_TIMEOUT_S:g})")  # fmt: skip
    parser.add_argument("--accept-model", action="append", default=[], metavar="CLASS",
                        help="a LightningModule class this site trains in FedAvg rounds (e.g. lightning_fed."
                             "models.MNISTClassifier); repeatable; none: the site trains nothing")  # fmt: skip
    parser.add_argument("--state-dir", default=None,
                        help="a folder of this site's own where its training state (optimizer) is kept between "
                             "rounds, so a restart goes on from it")  # fmt: skip
    parser.add_argument("--device", default="cpu",
                        help="where this site trains in FedAvg rounds: cpu (default), cuda or cuda:N (one of "
                             "its GPUs)")  # fmt: skip
    parser.add_argument(SEEDED_FLAG, action="store_true",
                        help="TESTS ONLY: take part in seeded secure-aggregation rounds (SecureAggregationConfig("
                             "seed=...)); a seed chosen by the server lets it derive this site's keys and unmask "
                             "its update, so a real site leaves this off (default: refused)")  # fmt: skip
    parser.add_argument("--allow-peer", action="append", default=None, metavar="NAME",
                        help="certificate common name allowed to connect (default: server); repeatable")  # fmt: skip
    return parser


def build_server(args: argparse.Namespace) -> SiteServer:
    """The site's server from parsed arguments (raises ``FederatedConfigError`` with what to fix)."""
    who = f"site {args.id!r}"
    split_address(args.listen, "--listen ")
    max_message_bytes = message_limit(args.max_message_mb, "--max-message-mb ")
    max_stored_bytes = message_limit(args.max_stored_mb, "--max-stored-mb ", default=DEFAULT_MAX_STORED_BYTES / MIB)
    credentials = load_credentials(args.id, who, args.certs, ca=args.ca, cert=args.cert, key=args.key)
    SiteServer.check_transport(args.id, args.listen, credentials, args.insecure)
    specs = [parse_data_flag(text) for text in args.data]
    if args.config:
        specs += specs_from_config(load_config(args.config), f"--config {args.config}")
    accepted = {path: load_class(path) for path in args.accept_model}
    site = SiteWorker(args.id, specs, policy=args.policy, max_message_bytes=max_message_bytes,
                      accepted_models=accepted, state_dir=args.state_dir,
                      allow_seeded_secagg=args.allow_seeded_secagg, device=args.device,
                      max_stored_bytes=max_stored_bytes)  # fmt: skip
    return SiteServer(site, args.listen, credentials, insecure=args.insecure,
                      allowed_peers=tuple(args.allow_peer or ("server",)), read_timeout=args.read_timeout)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the site's worker until SIGTERM/SIGINT; returns the exit status (0, or 2 for a configuration error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"lightning-fed worker {args.id!r}: %(levelname)s %(message)s")  # fmt: skip
    try:
        server = build_server(args)
        port = server.start()
    except LightningFedError as err:
        print(f"lightning-fed worker: error: {err}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    host = args.listen.rpartition(":")[0]  # checked: HOST:PORT; the port is the one gRPC bound
    mode = "plaintext, --insecure" if args.insecure else "mutual TLS"
    datasets = ", ".join(f"{name}" for name in server.site.datasets) or "none"
    seeded = f"; {SEEDED_FLAG}: seeded secure aggregation allowed, TESTS ONLY" if args.allow_seeded_secagg else ""
    print(f"lightning-fed worker {args.id!r} listening on {host}:{port} ({mode}; datasets: {datasets}; "
          f"policy: {args.policy}; trains on {server.site.training.device}{seeded})", flush=True)  # fmt: skip
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(grace=1.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"lightning-fed worker {args.id!r} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
