"""The site's side: one worker, its datasets and its policy, served over gRPC with mutual TLS.

:class:`SiteWorker` is the site without a transport: a :class:`~lightning_fed.workers.VirtualWorker` with the site's
policy (strict by default) whose store holds the site's datasets as private tensors, and a method that answers a
request frame with an answer frame (:mod:`.wire`). The site protects its datasets: they cannot be replaced, deleted or
written to from outside (a command that would write to one, or to a view of one, is refused before it runs:
:mod:`.readonly`), and a ``.get()`` the policy allows leaves a copy (the site keeps its data). A ``.get()`` lets go of
its object only once the answer is encoded: an answer over the site's or the client's message limit, or one the wire
cannot carry (a sparse tensor), leaves the object at the site.

:class:`SiteServer` serves a ``SiteWorker`` on one gRPC method (``/lightning_fed.Worker/Call``, a stream of 1 MiB
chunks each way, raw bytes, no generated code). With credentials it requires a client certificate signed by the
federation's CA (``require_client_auth=True``), and serves only the peers named in ``allowed_peers`` (the common
name of their certificate; ``server`` by default): another site's valid certificate is refused with
``PERMISSION_DENIED``. A peer whose certificate is from another CA, or that has none, fails the TLS handshake (gRPC
logs ``Handshake failed ...`` on the site's stderr). Without credentials it serves plaintext, on loopback only.

Example:
    >>> import torch
    >>> from lightning_fed.transport.wire import SiteQuery, decode_answer, encode_request
    >>> from lightning_fed.workers.messages import GetMessage
    >>> site = SiteWorker("alice-doc")
    >>> data_id, _ = site.add_dataset("toy", torch.randn(4, 2), torch.arange(4))
    >>> decode_answer(site.handle(encode_request(SiteQuery("hello"))))["datasets"]
    {'toy': (..., ...)}
    >>> decode_answer(site.handle(encode_request(GetMessage(data_id))))
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.PermissionDeniedError: worker 'alice-doc' refuses to release object ...
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
import torch

from lightning_fed.aggregation.functional import accumulation_dtype
from lightning_fed.exceptions import FederatedConfigError, LightningFedError, PermissionDeniedError, WorkerError
from lightning_fed.privacy.labels import leaves
from lightning_fed.privacy.policy import DataAccessPolicy
from lightning_fed.transport.errors import WireError
from lightning_fed.transport.readonly import storage_key, written_ids
from lightning_fed.transport.secagg import SecAggKeys, SecAggShares, SecAggUnmask, SiteSecAgg
from lightning_fed.transport.site_data import DatasetSpec, site_tensors, tag_dataset
from lightning_fed.transport.tls import Credentials, check_insecure, split_address
from lightning_fed.transport.training import SiteTraining, TrainRequest
from lightning_fed.transport.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MIB,
    PREFIX,
    SiteQuery,
    chunks,
    describe,
    encode_answer,
    encode_error,
    join_chunks,
    printable,
    read_request,
)
from lightning_fed.workers.base import VirtualWorker
from lightning_fed.workers.messages import (
    LABEL_PRIVATE,
    CommandMessage,
    DatasetMessage,
    DeleteMessage,
    GetMessage,
    ObjectMessage,
    TensorDescriptor,
)
from lightning_fed.workers.store import new_object_id

SERVICE = "lightning_fed.Worker"
METHOD = "Call"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
PROTOCOL = 1
READ_TIMEOUT_S = 120.0
# keepalive pings find half-open connections; no port sharing with another process
_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]
log = logging.getLogger("lightning_fed.transport.site")
DEFAULT_MAX_STORED_BYTES = 1024 * MIB  # 1 GiB of the server's objects at a site (lightning-fed worker --max-stored-mb)


class SiteWorker:
    """A site's worker and datasets, answering request frames (see the module docstring).

    Args:
        id: the site's id (its certificate's common name).
        datasets: the site's dataset specs, loaded now from the site's disk.
        policy: ``"strict"`` (default), ``"open"`` or a :class:`~lightning_fed.privacy.DataAccessPolicy`.
        max_message_bytes: the largest request or answer frame this site handles.
        accepted_models: the LightningModule classes this site trains in FedAvg rounds, by name.
        state_dir: where the site keeps its training state between rounds (a restart goes on from it), or ``None``.
        allow_seeded_secagg: take part in seeded secure-aggregation rounds (reproducible keys: tests only).
        device: where the site trains in FedAvg rounds: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.
        max_stored_bytes: the most the server's objects at the site (what it sends and what its commands make) may
            hold, in bytes (:func:`~lightning_fed.workers.store.stored_bytes`; the site's datasets do not count);
            ``None``: no limit.
    """

    def __init__(self, id: str, datasets: Sequence[DatasetSpec] = (), policy: DataAccessPolicy | str = "strict",
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, accepted_models: Mapping[str, type] | None = None,
                 state_dir: str | None = None, allow_seeded_secagg: bool = False,
                 device: str | torch.device = "cpu", max_stored_bytes: int | None = DEFAULT_MAX_STORED_BYTES,
                 ) -> None:  # fmt: skip
        if not isinstance(max_message_bytes, int) or max_message_bytes < PREFIX.size:
            raise FederatedConfigError(
                f"`max_message_bytes={max_message_bytes!r}` is not valid: pass a number of bytes, e.g. {2**26}."
            )
        self.worker = VirtualWorker(id=id, policy=policy)
        self.training = SiteTraining(accepted_models or {}, state_dir, device)
        self.secagg = SiteSecAgg(id, allow_seeded=allow_seeded_secagg)  # its clients' secrets, in memory only
        self.max_message_bytes = max_message_bytes
        self.datasets: dict[str, tuple[int, int]] = {}
        self._protected: set[int] = set()
        self._memory: dict[int, str] = {}  # storage_key -> the dataset it holds (views of it share the key)
        self._lock = threading.Lock()
        for spec in datasets:
            self.add_dataset(spec.name, *site_tensors(spec))
        if max_stored_bytes is not None:  # what the server stores; add_dataset's datasets are the site's own
            if isinstance(max_stored_bytes, bool) or not isinstance(max_stored_bytes, int) or max_stored_bytes < 1:
                raise FederatedConfigError(
                    f"`max_stored_bytes={max_stored_bytes!r}` is not valid: pass a number of bytes, e.g. "
                    f"{DEFAULT_MAX_STORED_BYTES}, or None for no limit."
                )
            fix = f"restart site {id!r} with a larger --max-stored-mb (now {max_stored_bytes / MIB:g})"
            self.worker._store.limit(max_stored_bytes, fix, owner=f"site {id!r}")

    @property
    def id(self) -> str:
        return str(self.worker.id)

    def add_dataset(self, name: str, data: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """Hold ``data`` and ``targets`` as the site's private dataset ``name`` (tagged for search if they are not
        yet); returns their object ids."""
        if name in self.datasets:
            raise FederatedConfigError(f"site {self.id!r} already has a dataset {name!r}: give each its own name.")
        if not data.__dict__.get("tags"):
            tag_dataset(name, data, targets)
        ids = (new_object_id(), new_object_id())
        with self.worker._store.uncounted():  # the site's own data: not the server's quota
            for obj_id, tensor in zip(ids, (data, targets)):
                self.worker._recv(ObjectMessage(obj_id, tensor, LABEL_PRIVATE))
                self._protected.add(obj_id)
                self._memory[storage_key(tensor)] = name
        self.datasets[name] = ids
        return ids

    def hello(self) -> dict[str, Any]:
        """What the site tells the server about itself: id, policy rules, dataset ids and its message limit."""
        policy = self.worker.policy
        rules = {name: getattr(policy, name) for name in ("release_model", "release_scalars", "release_data",
                                                          "release_shapes")}  # fmt: skip
        lengths = {name: _rows(self.worker.objects.get(ids[0])) for name, ids in self.datasets.items()}
        return {"protocol": PROTOCOL, "id": self.id, "policy": rules, "datasets": dict(self.datasets),
                "lengths": lengths, "models": sorted(self.training.accepted),
                "max_message_bytes": self.max_message_bytes}  # fmt: skip

    def audit(self) -> dict[str, list[dict[str, Any]]]:
        """The site's audit log as plain records (what left, and what was refused)."""
        log_ = self.worker.audit_log

        def plain(record: Any) -> dict[str, Any]:
            found = dataclasses.asdict(record)
            found.pop("worker_id", None)
            found["destination"] = None if found.get("destination") is None else str(found["destination"])
            return found

        return {"released": [plain(r) for r in log_], "refused": [plain(r) for r in log_.refused]}

    def handle(self, data: bytes, abandoned: Callable[[], bool] | None = None) -> bytes:
        """Answer one request frame with an answer (or error) frame; never raises. ``abandoned()`` says whether the
        caller gave up waiting (its timeout passed): the objects a command made then are freed, since no pointer
        will ever name them."""
        what = "a request"
        try:
            message, deletes, limit = read_request(data, self.max_message_bytes)
            what = describe(message)
            limit = self.max_message_bytes if limit is None else min(limit, self.max_message_bytes)  # the client's
            with self._lock:
                for obj_id in deletes:
                    self._delete(obj_id)
                if type(message) is GetMessage:
                    return self._get(message, limit, f"the answer to {what}")
                answer = self._answer(message)
                if abandoned is not None and type(message) is CommandMessage and abandoned():
                    for made in leaves(answer):
                        if type(made) is TensorDescriptor:
                            self._delete(made.obj_id)
                    raise WireError(f"the caller stopped waiting for {what}: the objects it made were freed")
            return encode_answer(answer, limit, f"the answer to {what}")
        except Exception as err:
            report = log.warning if isinstance(err, PermissionDeniedError) else log.info
            report("refused %s: %s", printable(what), printable(err))
            return encode_error(err)

    def _answer(self, message: Any) -> Any:
        kind = type(message)
        if kind is SiteQuery:
            return self.hello() if message.what == "hello" else self.audit()
        if kind is TrainRequest:
            return self._train(message)
        if kind is SecAggKeys:
            return self.secagg.advertise(message)
        if kind is SecAggShares:
            return self.secagg.share(message)
        if kind is SecAggUnmask:
            return self.secagg.unmask(message)
        if kind in (ObjectMessage, DatasetMessage) and message.obj_id in self._protected:
            raise WorkerError(
                f"worker {self.id!r} refuses {describe(message)}: object {message.obj_id} is one of the site's "
                "datasets, which cannot be replaced from outside."
            )
        if kind is DeleteMessage:
            return self._delete(message.obj_id)
        if kind is CommandMessage:
            return self._command(message)
        return self.worker._recv(message)

    def _get(self, message: GetMessage, limit: int, what: str) -> bytes:
        """A get's answer frame, encoded before the object leaves (see ``BaseWorker._handle_get``): an answer over
        ``limit`` or one the wire refuses leaves the object, its labels and the audit log as they were."""
        obj_id = message.obj_id
        found = self.worker.objects.get(obj_id)  # (delivers what the worker's outbox holds, as _recv would)
        if found is not None and not isinstance(found, torch.Tensor):
            raise WireError(
                f"worker {self.id!r} cannot send object {obj_id} back: it is a {type(found).__name__}, and only "
                "tensors and plain values cross the wire."
            )
        answer = self.worker._handle_get(message, lambda obj: encode_answer(obj, limit, what))  # checked, audited
        if not message.keep and obj_id in self._protected:
            self.worker._recv(ObjectMessage(obj_id, found, LABEL_PRIVATE))  # the site keeps its data
        return answer

    def _command(self, message: CommandMessage) -> Any:
        """Run a command, unless it would write to one of the site's datasets (or to memory they share)."""
        objects = self.worker.objects
        for obj_id in written_ids(message.command, message.args, message.kwargs):
            found = objects.get(obj_id)
            name = self._memory.get(storage_key(found)) if isinstance(found, torch.Tensor) else None
            if name is not None:
                which = "" if obj_id in self._protected else ", a view of it (it shares its memory)"
                raise PermissionDeniedError(
                    f"worker {self.id!r} refuses to run {message.command}: it would write to object {obj_id} of "
                    f"the site's dataset {name!r}{which}, and the site's datasets are read-only from outside. Work on "
                    "a copy at the site instead (e.g. data.clone(), then change the clone)."
                )
        before = self._dataset_state()
        try:
            return self.worker._recv(message)
        finally:
            if self._dataset_state() != before:  # a write the check above did not recognise: say so, loudly
                log.error("%s changed one of the site's datasets; restart the site to load them again",
                          printable(message.command))  # fmt: skip
                raise WorkerError(
                    f"worker {self.id!r} ran {message.command}, and it changed one of the site's datasets, which are "
                    "read-only from outside: the command was not recognised as a write before it ran. The site's "
                    "operator should restart the site to load its data again."
                )

    def _dataset_state(self) -> list[tuple[int, bool, int]]:
        objects = self.worker._store.objects
        found = (objects.get(obj_id) for obj_id in self._protected)
        return [(t._version, t.requires_grad, storage_key(t)) for t in found if isinstance(t, torch.Tensor)]

    def _train(self, request: TrainRequest) -> dict[str, Any]:
        """A round's local training on one of the site's datasets; its model (or, under secure aggregation, only its
        masked update) and, if released, its loss go back."""
        policy = self.worker.policy
        secure = request.secagg is not None
        if not secure and not policy.release_model:
            raise PermissionDeniedError(
                f"worker {self.id!r} keeps its model updates (release_model=False): it trains only under secure "
                "aggregation (FederatedStrategy(secure_aggregation=True)), where its update leaves masked."
            )
        ids = self.datasets.get(request.dataset)
        if ids is None:
            raise WorkerError(f"worker {self.id!r} has no dataset {request.dataset!r}: it has {sorted(self.datasets)}.")
        data, targets = (self.worker.objects[i] for i in ids)
        try:
            done = self.training.fit(request, data, targets)
        except Exception as err:
            if isinstance(err, LightningFedError) or policy.release_data:
                raise
            log.warning("round %d: training %s failed: %s: %s", request.round_index, printable(request.model),
                        type(err).__name__, printable(err))  # fmt: skip
            raise WorkerError(  # raised outside the except block: no chained error carries the message either
                f"worker {self.id!r} failed to train {request.model}: {type(err).__name__} (details withheld: it ran "
                "on the site's data, and the message could contain its values; the site's log has them)."
            ) from None
        loss = done.loss_sum if policy.release_scalars else None
        answer: dict[str, Any] = {"steps": done.steps, "samples": done.samples, "loss_sum": loss}
        if secure:
            assert request.secagg is not None
            dtypes = [accumulation_dtype(t.dtype) for t in done.start]
            answer["masked"], answer["clipped"] = self.secagg.masked_input(request.federation, request.secagg,
                                                                           done.update(), dtypes)  # fmt: skip
            numel, rule, sent = answer["masked"].numel(), "secure_aggregation", "its masked update"
        else:
            answer["state"] = done.state
            numel, rule, sent = sum(t.numel() for t in done.state.values()), "release_model", "its model"
        self.worker.audit_log.note(self.id, "update", "train", rule, (numel,))
        if loss is not None:
            self.worker.audit_log.note(self.id, "scalar", "train", "release_scalars", ())
        log.info("round %d: trained %s for %d steps on %r; sent %s (%d values)", request.round_index,
                 printable(request.model), done.steps, request.dataset, sent, numel)  # fmt: skip
        return answer

    def _delete(self, obj_id: int) -> None:
        if obj_id in self._protected:
            log.info("kept object %s: it is one of the site's datasets (a delete from outside is ignored)", obj_id)
            return
        self.worker._recv(DeleteMessage(obj_id))


def _rows(tensor: Any) -> int:
    """A dataset's number of samples (its first dimension); 0 for a tensor without one."""
    return int(tensor.shape[0]) if isinstance(tensor, torch.Tensor) and tensor.dim() > 0 else 0


class SiteServer:
    """Serves a :class:`SiteWorker` on ``listen`` (``HOST:PORT``; port 0 picks a free port) over gRPC.

    Args:
        site: the site's worker.
        listen: the address to listen on.
        credentials: the site's CA, certificate and key (mutual TLS), or ``None`` with ``insecure=True``.
        insecure: serve plaintext (loopback addresses only).
        allowed_peers: the certificate common names this site serves (default: the federation server's).
        max_workers: gRPC threads (requests are answered one at a time; the others wait for their turn).
        read_timeout: seconds a peer has to send its whole request; a stream still open after it is cancelled, so
            idle streams cannot hold every thread for long.
    """

    def __init__(self, site: SiteWorker, listen: str, credentials: Credentials | None = None, *, insecure: bool = False,
                 allowed_peers: Sequence[str] = ("server",), max_workers: int = 16,
                 read_timeout: float = READ_TIMEOUT_S) -> None:  # fmt: skip
        self.check_transport(site.id, listen, credentials, insecure)
        if isinstance(read_timeout, bool) or not isinstance(read_timeout, (int, float)) or not 0 < read_timeout < 1e6:
            raise FederatedConfigError(
                f"site {site.id!r}: `--read-timeout {read_timeout!r}` is not valid: pass seconds > 0, e.g. 120."
            )
        self.read_timeout = float(read_timeout)
        self.site = site
        self.listen = listen
        self.credentials = credentials
        self.allowed_peers = tuple(allowed_peers)
        self.port: int | None = None
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=_OPTIONS)
        handler = grpc.stream_stream_rpc_method_handler(self._call)  # raw bytes: no (de)serializers
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))

    @staticmethod
    def check_transport(site_id: str, listen: str, credentials: Credentials | None, insecure: bool) -> None:
        """Refuse to serve without certificates unless ``insecure`` (and then on loopback only)."""
        if credentials is None and not insecure:
            raise FederatedConfigError(
                f"site {site_id!r} has no certificates: pass the site's certificate folder (--certs DIR, holding "
                f"ca.pem, {site_id}.pem, {site_id}.key; python -m lightning_fed.transport.certificates makes them) or "
                "--cert/--key/--ca. Plaintext needs an explicit --insecure (loopback tests only)."
            )
        if credentials is not None and insecure:
            raise FederatedConfigError(f"site {site_id!r}: pass certificates or --insecure, not both.")
        split_address(listen)  # on every path: gRPC would bind a bad port elsewhere, or none
        if insecure:
            check_insecure(listen, f"site {site_id!r}")

    def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        try:
            if self.credentials is None:
                port = self._server.add_insecure_port(self.listen)
            else:
                creds = grpc.ssl_server_credentials([(self.credentials.key, self.credentials.cert)],
                                                    root_certificates=self.credentials.ca,
                                                    require_client_auth=True)  # fmt: skip
                port = self._server.add_secure_port(self.listen, creds)
        except RuntimeError as err:
            raise FederatedConfigError(f"site {self.site.id!r} cannot listen on {self.listen!r}: {err}.") from None
        if not port:
            raise FederatedConfigError(f"site {self.site.id!r} cannot listen on {self.listen!r} (in use?).")
        self._server.start()
        self.port = port
        return port

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (calls in progress get ``grace`` seconds) and wait until it stopped."""
        self._server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def _refusal(self, context: grpc.ServicerContext) -> str | None:
        if self.credentials is None:
            return None
        auth = context.auth_context()
        names = [name.decode(errors="replace") for name in auth.get("x509_common_name", [])]
        if any(name in self.allowed_peers for name in names):
            return None
        return (
            f"site {self.site.id!r} refuses peer {', '.join(names) or '(no name)'} at {context.peer()}: its "
            f"certificate is signed by the federation's CA, but this site serves only {list(self.allowed_peers)} "
            "(--allow-peer)."
        )

    def _call(self, request: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        refusal = self._refusal(context)
        if refusal is not None:
            log.warning("%s", printable(refusal))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        expired = threading.Event()

        def expire() -> None:  # a stream still open after read_timeout is cancelled: it frees its thread
            expired.set()
            context.cancel()

        deadline = threading.Timer(self.read_timeout, expire)
        deadline.daemon = True
        deadline.start()
        try:
            data = join_chunks(request, self.site.max_message_bytes, "a request")
        except WireError as err:
            log.warning("refused a request from %s: %s", printable(context.peer()), printable(err))
            yield from chunks(encode_error(err))
            return
        except grpc.RpcError:
            if expired.is_set():
                log.warning("dropped a request from %s: it was not sent whole within --read-timeout %g s",
                            printable(context.peer()), self.read_timeout)  # fmt: skip
            return
        finally:
            deadline.cancel()
        yield from chunks(self.site.handle(data, lambda: not context.is_active()))
