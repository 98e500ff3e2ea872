"""``RemoteWorker``: a worker at another site, reached over gRPC with mutual TLS; pointers work on it unchanged.

A ``RemoteWorker`` is a :class:`~lightning_fed.workers.BaseWorker` whose message delivery (:meth:`_recv`) encodes
the message (:mod:`.wire`), sends it to the site's :class:`~lightning_fed.transport.server.SiteServer` and decodes the
answer, so ``x.send(remote)``, commands on its pointers, ``.get()`` and ``remote.search("mnist-train")`` behave as on
a :class:`~lightning_fed.workers.VirtualWorker`, under the **site's** policy: a refused ``.get()`` raises the
site's :class:`~lightning_fed.exceptions.PermissionDeniedError`, and errors come back as the site's exception
types with the site's message. Every pointer operation is one round trip; dropping a pointer costs none (its
delete goes with the next request). Each call has a timeout; a site that does not answer in time, is not running
or fails the TLS handshake raises :class:`~lightning_fed.transport.errors.SiteUnavailableError` naming the site, its
address and the timeout.

No code crosses the wire, so ``install_plan`` and ``session`` raise: a site trains whole FedAvg rounds instead
(:meth:`RemoteWorker.train`, driven by ``FederatedStrategy`` through :mod:`lightning_fed.backends.remote`). Objects
cannot ``move`` between sites.

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.transport.server import SiteServer, SiteWorker
    >>> site = SiteWorker("alice-doc")
    >>> _ = site.add_dataset("toy", torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0]))
    >>> server = SiteServer(site, "127.0.0.1:0", insecure=True)
    >>> alice = RemoteWorker("alice-doc", f"127.0.0.1:{server.start()}", insecure=True, timeout=20)
    >>> (sy.send(torch.tensor([1.0, 2.0]), alice) * 2).get()
    tensor([2., 4.])
    >>> data, target = alice.search("toy")
    >>> data.shape, data.sum().get()
    (torch.Size([3, 2]), tensor(15.))
    >>> data.get()
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.PermissionDeniedError: worker 'alice-doc' refuses to release object ...
    >>> [(r.command, r.kind) for r in alice.audit_log.refused]
    [('get', 'data')]
    >>> alice.close(); server.stop()
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NoReturn

import grpc
import torch

from lightning_fed.exceptions import FederatedConfigError, WorkerError
from lightning_fed.privacy.audit import AuditLog, AuditRecord
from lightning_fed.privacy.policy import DataAccessPolicy
from lightning_fed.transport.errors import SiteRefusedError, SiteUnavailableError, WireError
from lightning_fed.transport.secagg import SECAGG_MESSAGES, SecAggKeys, SecAggShares, SecAggUnmask
from lightning_fed.transport.server import FULL_METHOD, PROTOCOL
from lightning_fed.transport.tls import PathLike, check_insecure, load_credentials, split_address
from lightning_fed.transport.training import TrainRequest
from lightning_fed.transport.wire import (
    SiteQuery,
    chunks,
    decode_answer,
    describe,
    encode_request,
    join_chunks,
    message_limit,
)
from lightning_fed.workers.base import BaseWorker
from lightning_fed.workers.messages import CommandMessage, DeleteMessage
from lightning_fed.workers.session import WorkerSession

_SITE_POLICY = "the site's"  # what BaseWorker.__init__ hands set_policy: the policy lives at the site
LATER = (
    "no code crosses the wire: a remote site trains whole FedAvg rounds (FederatedStrategy with a SiteDataModule "
    "over remote workers, one model down and one up per round), and answers the pointer API (send, commands, get)."
)


def _state_left_here() -> str | None:
    """The torch setting of this thread or process that a command would run under here but not at a site, if any
    (its autograd mode travels with the command)."""
    if torch.get_default_dtype() is not torch.float32:
        return f"torch.set_default_dtype({torch.get_default_dtype()})"
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            return f"torch.autocast({device!r}, dtype={torch.get_autocast_dtype(device)})"
    if torch.is_anomaly_enabled():
        return "torch.autograd.set_detect_anomaly(True)"
    return None


class RemoteWorker(BaseWorker):
    remote = True  # its work runs at its site: the strategy sends it whole rounds (:meth:`train`)

    """The server's handle on the worker a site runs (``python -m lightning_fed.transport.worker_main``).

    Args:
        id: the site's id; the site's certificate must name it (checked in the TLS handshake) and the site must
            answer to it.
        address: the site's ``HOST:PORT``.
        certs: this side's certificate folder (``ca.pem``, ``<name>.pem``, ``<name>.key``), or give ``ca``, ``cert``
            and ``key``; ``insecure=True`` instead for plaintext on loopback (tests).
        name: this side's name in the certificate folder (``server``).
        server_name: the name the site's certificate must hold (default: ``id``).
        timeout: seconds each call may take before :class:`SiteUnavailableError`.
        max_message_mb: the largest message sent or answer accepted, in MiB (the site has its own limit).
    """

    def __init__(self, id: Hashable, address: str, *, certs: PathLike | None = None, ca: PathLike | None = None,
                 cert: PathLike | None = None, key: PathLike | None = None, name: str = "server",
                 server_name: str | None = None, insecure: bool = False, timeout: float = 30.0,
                 max_message_mb: float = 64, hook: Any = None, verbose: bool | None = None) -> None:  # fmt: skip
        who = f"RemoteWorker({id!r}, {address!r})"
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise FederatedConfigError(f"{who}: `timeout={timeout!r}` is not valid: pass seconds > 0, e.g. 30.")
        max_message_bytes = message_limit(max_message_mb, "max_message_mb=", who)
        split_address(address)
        credentials = load_credentials(name, who, certs, ca=ca, cert=cert, key=key)
        if credentials is None and not insecure:
            raise FederatedConfigError(
                f"{who} has no certificates: pass certs=DIR (the folder made by python -m "
                "lightning_fed.transport.certificates) or ca=, cert=, key=; insecure=True for plaintext on loopback "
                "only."
            )
        if credentials is not None and insecure:
            raise FederatedConfigError(f"{who}: pass certificates or insecure=True, not both.")
        if insecure:
            check_insecure(address, who)
        super().__init__(hook, id, policy=_SITE_POLICY, verbose=verbose)  # type: ignore[arg-type]
        self.address = address
        self.timeout = float(timeout)
        self.max_message_bytes = max_message_bytes
        self.secure = credentials is not None
        # a site that restarts is reached again within about 2 s (gRPC's default backoff grows to minutes)
        backoff = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 2000)]  # fmt: skip
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=backoff)
        else:
            creds = grpc.ssl_channel_credentials(credentials.ca, credentials.key, credentials.cert)
            override = [("grpc.ssl_target_name_override", server_name or str(id))]
            self._channel = grpc.secure_channel(address, creds, options=override + backoff)
        self._rpc: Callable[..., Any] = self._channel.stream_stream(FULL_METHOD)
        self.traffic: dict[str, list[int]] = {}  # message kind -> [messages, bytes sent, bytes received]
        self._deletes: list[int] = []
        self._hello: dict[str, Any] | None = None

    # -- transport ------------------------------------------------------------------------------------------------
    def _recv(self, message: Any) -> Any:
        """Deliver ``message`` to the site and return its answer (deletes are queued for the next request)."""
        self.check_reachable()
        if self.verbose:
            print(f"remote worker {self.id!r} ({self.address}) sends {describe(message)}")
        if type(message) is DeleteMessage:
            self._deletes.append(message.obj_id)
            return None
        if type(message) is CommandMessage:
            unsent = _state_left_here()
            if unsent is not None:
                raise WorkerError(
                    f"remote worker {self.id!r} cannot run {message.command} as it would run here: {unsent} is in "
                    "effect in this process, and it does not reach the site, which would compute without it. Send "
                    "commands to a site outside it (the autograd mode, torch.no_grad(), does travel)."
                )
        if self._hello is None:
            self.hello()
        return self._request(message)

    def _send(self, message: Any, to: BaseWorker) -> Any:
        raise WorkerError(f"remote worker {self.id!r} sends nothing from this process: it lives at its site.")

    def _request(self, message: Any) -> Any:
        deletes = list(self._deletes)
        data = encode_request(message, deletes, self.max_message_bytes)
        del self._deletes[: len(deletes)]
        try:
            answer = self._exchange(data, describe(message))
            counts = self.traffic.setdefault(type(message).__name__, [0, 0, 0])
            counts[0], counts[1], counts[2] = counts[0] + 1, counts[1] + len(data), counts[2] + len(answer)
            return decode_answer(answer, self.max_message_bytes)
        except SiteUnavailableError:
            self._deletes[:0] = deletes  # deletes are idempotent: send them again with the next request
            raise

    def _exchange(self, data: bytes, what: str) -> bytes:
        """Send ``data`` and join the answer's chunks, refused as soon as it would pass its declared size or this
        side's limit (a site cannot make this side buffer more)."""
        call = self._rpc(chunks(data), timeout=self.timeout)
        try:
            return join_chunks(call, self.max_message_bytes, f"worker {self.id!r}'s answer to {what}")
        except WireError:
            call.cancel()
            raise
        except grpc.RpcError as err:
            raise self._rpc_error(err, what) from None

    def _rpc_error(self, err: grpc.RpcError, what: str) -> Exception:
        code, details = err.code(), err.details()
        where = f"worker {self.id!r} at {self.address}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return SiteUnavailableError(
                f"{where} did not answer {what} within the timeout of {self.timeout:g} s: the site is hung, "
                "overloaded or unreachable. This side stopped waiting; the site may still run the request (an in-place "
                "command may still change its object; what a command makes is freed there). Pass a larger timeout= "
                "if the site is only slow."
            )
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return SiteRefusedError(f"{where} refused this side: {details}")
        if code == grpc.StatusCode.UNAVAILABLE:
            tls = (
                "check that this side's certificate and the site's are signed by the same federation CA and that "
                "the site's certificate names it" if self.secure else "this side uses plaintext (insecure=True): "
                "a site that runs with TLS refuses it"
            )  # fmt: skip
            return SiteUnavailableError(
                f"{where} is unavailable for {what} ({details}): the site is not running or cannot be reached, or "
                f"the TLS handshake failed ({tls})."
            )
        return SiteUnavailableError(f"{where} failed to answer {what}: {code.name}: {details}")

    # -- the site -------------------------------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        """Ask the site who it is (id, policy rules, dataset ids, message limit); checks that it is ``id``."""
        info = self._request(SiteQuery("hello"))
        if not isinstance(info, dict) or info.get("protocol") != PROTOCOL:
            raise WireError(f"worker {self.id!r} at {self.address} speaks another protocol: {info!r}.")
        if info.get("id") != str(self.id):
            raise SiteRefusedError(
                f"the site at {self.address} is {info.get('id')!r}, not {self.id!r}: check the address of each site."
            )
        self._hello = info
        return info

    def train(self, request: TrainRequest) -> dict[str, Any]:
        """One FedAvg round's local work at the site: the global model down, the site's local model (and its loss,
        if its policy releases scalars) up. See :mod:`lightning_fed.transport.training`."""
        if self._hello is None:
            self.hello()
        return self._request(request)

    def secure_aggregation(self, request: SecAggKeys | SecAggShares | SecAggUnmask) -> Any:
        """One step of a secure-aggregation round at the site (its keys, its encrypted shares, its unmasking shares;
        see :mod:`lightning_fed.transport.secagg`), driven by
        :class:`~lightning_fed.secure_aggregation.remote.RemoteSecureAggregationRound`."""
        if type(request) not in SECAGG_MESSAGES:
            raise WireError(f"{describe(request)} is not a secure-aggregation request.")
        if self._hello is None:
            self.hello()
        return self._request(request)

    def flush(self) -> None:
        """Send the queued deletes now (they otherwise go with the next request)."""
        if self._deletes:
            self._request(SiteQuery("hello"))

    def close(self) -> None:
        """Send the queued deletes (if the site answers) and close the channel."""
        try:
            self.flush()
        except WorkerError:
            pass
        finally:
            self._channel.close()

    def __enter__(self) -> RemoteWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def datasets(self) -> dict[str, tuple[int, int]]:
        """The site's datasets: ``name -> (data id, target id)`` (use :meth:`search` for pointers)."""
        return dict((self._hello or self.hello())["datasets"])

    @property
    def policy(self) -> DataAccessPolicy:
        """The site's policy rules, as the site reports them (an ``allow`` callback at the site is not shown)."""
        return DataAccessPolicy(**(self._hello or self.hello())["policy"])

    @property
    def audit_log(self) -> AuditLog:
        """The site's audit log, fetched now: what left the site and what it refused."""
        found = self._request(SiteQuery("audit"))
        log = AuditLog()
        log.records.extend(AuditRecord(worker_id=self.id, **record) for record in found["released"])
        log.refused.extend(AuditRecord(worker_id=self.id, **record) for record in found["refused"])
        return log

    def set_policy(self, policy: DataAccessPolicy | str) -> None:
        if policy is _SITE_POLICY:
            self._guard = None
            return
        raise WorkerError(
            f"remote worker {self.id!r}: its policy is the site's own (`--policy` of the site's worker program); "
            "it cannot be set from the server."
        )

    # -- what a remote worker cannot do (yet) ---------------------------------------------------------------------
    def _local_only(self, what: str) -> NoReturn:
        raise WorkerError(f"remote worker {self.id!r} ({self.address}) cannot {what}: {LATER}")

    @property
    def objects(self) -> dict[int, Any]:
        self._local_only("show its objects (they live at the site; use search() for pointers to its data)")

    _objects = objects
    _tensors = objects

    def clear_objects(self) -> None:
        self._local_only("clear its objects from the server (the site keeps its datasets)")

    def session(self, refs: Any = None, label: str = "plan 'session'") -> WorkerSession:
        self._local_only(f"run {label}")

    def install_plan(self, name: str, fn: Callable[..., Any]) -> None:
        self._local_only(f"install plan {name!r}")

    def resolve(self, refs: Any, inputs: dict[int, int] | None = None) -> Any:
        self._local_only("resolve references in this process")

    def __repr__(self) -> str:
        return f"<RemoteWorker id:{self.id} address:{self.address} {'mTLS' if self.secure else 'plaintext'}>"
