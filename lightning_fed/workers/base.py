"""Workers: an object store, a dispatch table from message type to handler, and a two-method transport.

A worker never runs code named by a message: commands come from the allowlist in :mod:`.commands`, and plans
(whole training steps, used by the federated strategy) are callables its owner installed beforehand with
:meth:`BaseWorker.install_plan`, looked up by name.

Example:
    >>> import torch
    >>> from lightning_fed.workers import VirtualWorker, me
    >>> from lightning_fed.workers.messages import CommandMessage, ObjectMessage, ObjectRef
    >>> alice = VirtualWorker(id="alice")
    >>> me._send(ObjectMessage(1, torch.tensor([1.0, 2.0])), alice)
    >>> desc = me._send(CommandMessage("torch.mul", (ObjectRef(1), 3)), alice)
    >>> alice.objects[desc.obj_id]
    tensor([3., 6.])
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import TensorDataset

from lightning_fed.exceptions import FederatedConfigError, PointerError, WorkerError
from lightning_fed.workers.arguments import PLAIN_RESULTS, copy_out, resolve_refs, withheld
from lightning_fed.workers.commands import refusal_reason, resolve_command
from lightning_fed.workers.epoch import bump_grad_epoch, changes_grads
from lightning_fed.workers.fresh_memory import uninitialized_memory
from lightning_fed.workers.messages import (
    CommandMessage,
    DatasetMessage,
    DeferredGradMessage,
    DeleteMessage,
    GetMessage,
    MoveMessage,
    ObjectMessage,
    ObjectRef,
    PlanMessage,
    SearchMessage,
    SearchResult,
    TensorDescriptor,
    summary,
)
from lightning_fed.workers.outbox import GradOutbox, handle_deferred_grad
from lightning_fed.workers.session import WorkerSession
from lightning_fed.workers.store import ObjectStore

if TYPE_CHECKING:  # the privacy layer sits below the workers: imported for type hints only
    from lightning_fed.privacy.audit import AuditLog
    from lightning_fed.privacy.policy import DataAccessPolicy

_current_worker: contextvars.ContextVar[BaseWorker | None] = contextvars.ContextVar("lf_worker", default=None)


def current_worker() -> BaseWorker | None:
    """The worker whose command or plan is running right now, or ``None`` on the local side."""
    return _current_worker.get()


# the pointer layer sits above the workers: it registers how search results become pointers (register_search)
_search_pointers: Callable[..., list[Any]] | None = None


def register_search(make_pointers: Callable[..., list[Any]]) -> None:
    """``make_pointers(worker, query)`` makes what :meth:`BaseWorker.search` returns (set by the pointer layer)."""
    global _search_pointers
    _search_pointers = make_pointers


class BaseWorker:
    """A party that holds objects and answers messages. Subclasses provide the transport (:meth:`_send`).

    Args:
        hook: the :class:`~lightning_fed.TorchHook` this worker belongs to, or ``None``. Ids are unique per hook.
        id: the worker's name (a string or an int), as in PySyft's ``VirtualWorker(hook, id="alice")``.
        policy: what may leave this worker: ``"strict"`` (the default: its data never does; model updates and
            scalar metrics do, audited), ``"open"`` (everything may, audited; warns once) or a
            :class:`~lightning_fed.privacy.DataAccessPolicy`. Data you send to a worker stays yours (public).
        verbose: print every message this worker receives (its kind and command, never its values); ``None``
            takes the hook's ``verbose``.
    """

    verbose: bool = False

    def __init__(
        self,
        hook: Any = None,
        id: Hashable | None = None,
        *,
        policy: DataAccessPolicy | str = "strict",
        verbose: bool | None = None,
    ) -> None:
        if id is None:
            raise FederatedConfigError(
                f"{type(self).__name__} needs an `id`, got id=None: pass a name, e.g. "
                f"{type(self).__name__}(hook, id='alice')."
            )
        if not isinstance(id, (str, int)) or isinstance(id, bool):
            raise FederatedConfigError(
                f"`id` must be a string or an int, got id={id!r} ({type(id).__name__}): pass a name such as 'alice'."
            )
        if hook is not None and not hasattr(hook, "_register_worker"):
            raise FederatedConfigError(
                f"`hook` must be a lightning_fed.TorchHook or None, got hook={hook!r}: "
                "create one with `hook = lightning_fed.TorchHook(torch)` or leave it out."
            )
        if verbose is not None and not isinstance(verbose, bool):
            raise FederatedConfigError(f"`verbose={verbose!r}` is not valid: pass True, False, or None (the hook's).")
        self.id = id
        self.hook = hook
        self.verbose = bool(getattr(hook, "verbose", False)) if verbose is None else verbose
        self._store = ObjectStore()
        self._grad_outbox = GradOutbox()  # gradients that arrived with their parameters, not yet attached
        self._plans: dict[str, Callable[..., Any]] = {}
        self._guard: Any = None  # a privacy.policy.WorkerGuard; it holds no reference to self
        if policy is not None or not isinstance(self, LocalWorker):
            self.set_policy(policy)
        if hook is not None:
            hook._register_worker(self)

    # -- the store, as PySyft showed it --------------------------------------------------------------------------
    @property
    def objects(self) -> dict[int, Any]:
        """The worker's objects, ``id -> object`` (gradients kept aside attached first: workers/outbox.py)."""
        self._grad_outbox.deliver(self)
        return self._store.objects

    _objects = objects  # the seed tutorial prints `worker._objects`
    _tensors = objects  # PySyft's Part 09 prints `bob._tensors` (its later name for the store)

    def clear_objects(self) -> None:
        """Forget every object this worker holds."""
        bump_grad_epoch()
        self._grad_outbox.drop_all()
        self._store.clear()
        if self._guard is not None:
            self._guard.forget_all()

    # -- data-access policy (lightning_fed.privacy.policy) ---------------------------------------------------------
    def set_policy(self, policy: DataAccessPolicy | str) -> None:
        """Guard what leaves this worker with ``policy`` (see the class); objects held now count as private."""
        from lightning_fed.privacy.policy import resolve_policy  # the privacy layer registers nothing here

        self._guard = resolve_policy(policy).guard(self.id, self._store.objects)

    @property
    def policy(self) -> DataAccessPolicy | None:
        return None if self._guard is None else self._guard.policy

    @property
    def audit_log(self) -> AuditLog | None:
        """What left this worker under its policy (``None`` without a policy)."""
        return None if self._guard is None else self._guard.audit_log

    # -- transport ------------------------------------------------------------------------------------------------
    def _send(self, message: Any, to: BaseWorker) -> Any:
        """Deliver ``message`` to worker ``to`` and return its answer."""
        raise NotImplementedError

    def _recv(self, message: Any) -> Any:
        """Answer a message addressed to this worker, through the dispatch table."""
        self.check_reachable()
        if self.verbose:
            print(f"worker {self.id!r} received {summary(message)}")
        handler = self._routes.get(type(message))
        if handler is None:
            raise WorkerError(f"worker {self.id!r} does not understand a {type(message).__name__}.")
        if self._grad_outbox.by_param:  # gradients kept aside: attached first if this message could see them
            self._grad_outbox.before(self, message)
        if not changes_grads(message):
            return handler(self, message)
        bump_grad_epoch()  # pointers forget the .grad they kept (workers/epoch.py), before and after
        try:
            return handler(self, message)
        finally:
            bump_grad_epoch()

    def place_elsewhere(self, reason: str | None) -> None:
        """This worker lives in another process for now (a run over several processes): refuse every message with
        :class:`~lightning_fed.exceptions.PointerError` ``reason``; ``None`` accepts messages again."""
        self._grad_outbox.deliver(self)
        bump_grad_epoch()
        self._elsewhere = reason

    # -- sessions: the one way code runs at a worker (workers/session.py) ---------------------------------------
    def session(self, refs: Any = None, label: str = "plan 'session'") -> WorkerSession:
        """``with worker.session(refs) as real:`` runs the block at this worker on its own objects ``refs``; an
        exception in the block leaves as a :class:`WorkerError` naming the worker and ``label``."""
        return WorkerSession(self, refs, label)

    def check_reachable(self) -> None:
        """Raise :class:`~lightning_fed.exceptions.PointerError` when this worker lives in another process."""
        elsewhere = getattr(self, "_elsewhere", None)
        if elsewhere is not None:
            raise PointerError(elsewhere)

    def resolve(self, refs: Any, inputs: dict[int, int] | None = None) -> Any:
        """The worker's own objects for ``refs`` (:class:`ObjectRef` in tuples, lists, dicts)."""
        return resolve_refs(refs, self._store, self.id, {} if inputs is None else inputs)

    def enter(self) -> Any:
        """Make this worker the current one; returns the token :meth:`leave` takes."""
        self._grad_outbox.deliver(self)  # code running at the worker may read any .grad, and change it
        bump_grad_epoch()
        return _current_worker.set(self)

    def leave(self, token: Any) -> None:
        bump_grad_epoch()
        _current_worker.reset(token)

    # -- plans ----------------------------------------------------------------------------------------------------
    def install_plan(self, name: str, fn: Callable[..., Any]) -> None:
        """Install ``fn`` under ``name``; :class:`PlanMessage` runs it with the worker's objects as arguments."""
        self._plans[name] = fn

    def remove_plan(self, name: str) -> None:
        self._plans.pop(name, None)

    # -- data discovery (PySyft's tags) ---------------------------------------------------------------------------
    def search(self, *query: str | int | list[str | int]) -> list[Any]:
        """Pointers to this worker's tensors that match every item of ``query`` (an id, a tag, or a word of the
        description), in store order: ``bob.search("#radio")``, ``bob.search(["#boston", "#data"])``.

        A search pointer does not free the tensor when dropped (the worker still holds it for whoever put it
        there); its ``.get()`` takes the tensor as any pointer's does.
        """
        if _search_pointers is None:
            raise WorkerError("search() returns pointers: import lightning_fed (its pointers register themselves).")
        items: list[str | int] = []
        for item in query:
            items.extend(item if isinstance(item, (list, tuple)) else [item])
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise FederatedConfigError(
                    f"search query item {item!r} ({type(item).__name__}) is not valid: pass tags, words of a "
                    "description, or object ids, e.g. bob.search('#radio', '#hospital1')."
                )
        return _search_pointers(self, tuple(str(item) for item in items))

    # -- handlers -------------------------------------------------------------------------------------------------
    def _handle_object(self, message: ObjectMessage) -> None:
        arrival = getattr(message.obj, "_on_arrival", None)  # a pointer (a chain's link) now speaks for this worker
        if arrival is not None:
            arrival(self)
        self._store.set(message.obj_id, message.obj)
        if self._guard is not None:
            self._guard.on_store(message.obj_id, message.obj, message.labels)

    def _missing(self, obj_id: int) -> WorkerError:
        return WorkerError(f"worker {self.id!r} holds no object {obj_id}: {self._store.why_missing(obj_id)}.")

    def _handle_get(self, message: GetMessage, deliver: Callable[[Any], Any] | None = None) -> Any:
        """The object (``keep``: a copy); with ``deliver`` (a site's encoder), ``deliver(obj)``, and the object leaves
        (store, labels, audit log) only once that returned: an answer that cannot be sent changes nothing here."""
        obj_id, keep = message.obj_id, message.keep
        if obj_id not in self._store:
            raise self._missing(obj_id)
        obj, request, rule = self._store.get(obj_id), None, ""
        if self._guard is not None:  # raises PermissionDeniedError (recorded as refused), else what may leave
            request, rule = self._guard.check(obj_id, obj, "to_here" if keep else "get")
            obj = self._guard.outgoing(obj, request)
        answer = copy_out(obj) if keep else obj
        if deliver is not None:
            answer = deliver(answer)  # raises: nothing changed here
        if request is not None:
            self._guard.commit(request, rule)
        if not keep:
            self._store.depart(obj_id, "get")
        return answer

    def _handle_move(self, message: MoveMessage) -> None:
        """Hand an object to another worker, all or nothing: a refused or failed move leaves this store, its labels
        and its audit log as they were; a private (or model) object arrives private (or model) there."""
        obj_id, to = message.obj_id, message.to
        if obj_id not in self._store:
            raise self._missing(obj_id)
        obj = self._store.get(obj_id)
        labels, request, rule = 0, None, ""
        if self._guard is not None:
            request, rule = self._guard.check(obj_id, obj, "move", getattr(to, "id", None))
            labels = self._guard.labels_of(obj_id, obj)
            obj = self._guard.outgoing(obj, request)
        self._send(ObjectMessage(message.new_id, obj, labels), to)  # raises: nothing changed here
        if request is not None:
            self._guard.commit(request, rule)
        self._store.depart(obj_id, f"it was moved to worker {getattr(to, 'id', to)!r} with .move()")

    def _handle_delete(self, message: DeleteMessage) -> None:
        self._store.depart(message.obj_id, "delete")
        if self._guard is not None:
            self._guard.forget(message.obj_id)

    def _handle_dataset(self, message: DatasetMessage) -> int:
        tensors = []
        for obj_id in message.tensor_ids:
            if obj_id not in self._store:
                raise self._missing(obj_id)
            tensors.append(self._store.get(obj_id))
        dataset = TensorDataset(*tensors)  # checks that the tensors have the same number of rows
        self._store.set(message.obj_id, dataset)
        if self._guard is not None:  # built from the worker's tensors: their labels, not "private" by kind
            labels = self._guard.labels
            labels.forget_id(message.obj_id)
            for obj_id, tensor in zip(message.tensor_ids, tensors, strict=True):
                labels.add(message.obj_id, None, labels.of(obj_id, tensor))
        return len(dataset)

    def _handle_search(self, message: SearchMessage) -> tuple[SearchResult, ...]:
        found = []
        for obj_id, obj in self._store.objects.items():
            if not isinstance(obj, torch.Tensor):
                continue
            tags = frozenset(obj.__dict__.get("tags") or ())
            description = obj.__dict__.get("description")
            if message.matches(obj_id, tags, description):
                descriptor = TensorDescriptor(obj_id, obj.shape, obj.dtype, obj.device, obj.requires_grad, obj.layout)
                found.append(SearchResult(descriptor, tags, description))
        return tuple(found)

    def _handle_command(self, message: CommandMessage) -> Any:
        func = resolve_command(message.command)
        if func is None:
            reason = refusal_reason(message.command) or "it is not in the worker's command allowlist"
            raise WorkerError(f"worker {self.id!r} refuses to run {message.command}: {reason}.")
        grad = message.grad_enabled
        if grad is None or grad is torch.is_grad_enabled():
            return self._execute(message.command, func, message.args, message.kwargs, command=True)
        with torch.set_grad_enabled(grad):  # the sender's mode (a remote sender's no_grad() reaches the site)
            return self._execute(message.command, func, message.args, message.kwargs, command=True)

    def _handle_plan(self, message: PlanMessage) -> Any:
        fn = self._plans.get(message.plan)
        if fn is None:
            raise WorkerError(
                f"worker {self.id!r} has no plan named {message.plan!r}; installed plans: {sorted(self._plans)}."
            )
        return self._execute(f"plan {message.plan!r}", fn, message.args, message.kwargs)

    def _execute(self, label: str, func: Callable[..., Any], args: tuple, kwargs: dict, command: bool = False) -> Any:
        store, guard = self._store, self._guard
        inputs: dict[int, int] = {}
        checked = label if command else ""
        real_args = resolve_refs(args, store, self.id, inputs, checked)
        real_kwargs = resolve_refs(kwargs, store, self.id, inputs, checked) if kwargs else {}
        pending = None
        if guard is not None and inputs:  # labels: one storage lookup per input, more only for labelled inputs
            pending = guard.before(label, store.objects, inputs.values(), real_args, real_kwargs)
        clear = uninitialized_memory(label, real_args) if command else None
        token = _current_worker.set(self)
        failure: Exception | None = None
        try:
            result = func(*real_args, **real_kwargs)
            if clear is not None:  # freed private bytes never reach a result labelled public
                clear(result)
        except WorkerError:
            raise
        except Exception as err:
            failure = err
        finally:
            _current_worker.reset(token)
        if failure is not None:  # raised outside the except block: a withheld error keeps no __context__ either
            if pending is not None and pending.private and withheld(failure, guard):
                name = type(failure).__name__
                failure = None
                raise WorkerError(
                    f"worker {self.id!r} failed to run {label}: {name} (details withheld: its inputs are private "
                    "to the worker, and the error message could contain their values)."
                )
            raise WorkerError(f"worker {self.id!r} failed to run {label}: {type(failure).__name__}: {failure}") from (
                failure
            )
        if pending is not None:  # provenance: results, and inputs written in place, inherit the inputs' labels
            guard.after(pending, label, real_args, real_kwargs, result, store.objects)
        return self._register(result, inputs, label if command else "")

    def _register(self, result: Any, inputs: dict[int, int], command: str = "") -> Any:
        if isinstance(result, torch.Tensor):
            existing = inputs.get(id(result))
            if existing is not None:
                return ObjectRef(existing)
            obj_id = self._store.new_id()
            self._store.set(obj_id, result)
            return TensorDescriptor(
                obj_id, result.shape, result.dtype, result.device, result.requires_grad, result.layout
            )
        kind = type(result)
        if kind is tuple or kind is list:
            return kind(self._register(item, inputs, command) for item in result)
        if isinstance(result, tuple):  # namedtuples, and structseqs such as torch.return_types.max
            items = [self._register(item, inputs, command) for item in result]
            return kind(*items) if hasattr(result, "_fields") else kind(items)
        if kind is dict:
            return {key: self._register(value, inputs, command) for key, value in result.items()}
        if command and not isinstance(result, PLAIN_RESULTS):
            raise WorkerError(
                f"worker {self.id!r} refuses to return the {kind.__name__} that {command} made: it would hand the "
                "caller objects that live at the worker (an autograd graph holds the tensors it was computed from). "
                "Only tensors (as pointers) and plain values leave a command."
            )
        return result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id:{self.id} #objects:{len(self._store)}>"

    # The dispatch table, {message type: handler}, lives on the class: a worker holds no bound methods of itself,
    # so a dropped worker (and its store) is freed at once, without waiting for the cycle collector.
    _routes: dict[type, Callable[[BaseWorker, Any], Any]] = {}


BaseWorker._routes = {
    ObjectMessage: BaseWorker._handle_object,
    GetMessage: BaseWorker._handle_get,
    MoveMessage: BaseWorker._handle_move,
    DeleteMessage: BaseWorker._handle_delete,
    DeferredGradMessage: handle_deferred_grad,
    CommandMessage: BaseWorker._handle_command,
    PlanMessage: BaseWorker._handle_plan,
    SearchMessage: BaseWorker._handle_search,
    DatasetMessage: BaseWorker._handle_dataset,
}


class VirtualWorker(BaseWorker):
    """A worker in this process: messages are delivered by a method call and nothing is pickled.

    ``send`` hands the worker its own copy of a tensor, ``get`` hands the worker's object back, and commands run on
    the worker's tensors in place, so a simulation costs what its math costs.

    Example:
        >>> import torch, lightning_fed as sy
        >>> clinic = sy.VirtualWorker(id="clinic")
        >>> ptr = sy.send(torch.tensor([0, 1, 2]), clinic)
        >>> list(clinic._objects.values())
        [tensor([0, 1, 2])]
        >>> ptr.get(), clinic._objects
        (tensor([0, 1, 2]), {})
    """

    def _send(self, message: Any, to: BaseWorker) -> Any:
        return to._recv(message)


class LocalWorker(VirtualWorker):
    """The local worker ``me``: the owner of every pointer made in this process."""


me = LocalWorker(id="me", policy=None)  # type: ignore[arg-type]  # the local side: nothing to guard
