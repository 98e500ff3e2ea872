"""The site's side without a network: its datasets, their protection, its configuration and its program's errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError, WorkerError
from lightning_fed.transport.errors import WireError
from lightning_fed.transport.server import SiteWorker
from lightning_fed.transport.site_data import DatasetSpec, load_mnist, parse_data_flag, site_tensors, specs_from_config
from lightning_fed.transport.wire import SiteQuery, decode_answer, encode_request
from lightning_fed.transport.worker_main import main
from lightning_fed.workers.messages import CommandMessage, DeleteMessage, GetMessage, ObjectMessage, ObjectRef


class TinyDataset(Dataset):
    """A dataset class a site has installed (imported by its path from the site's configuration)."""

    def __init__(self, n: int = 3) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((2,), float(i)), i % 2


def _ask(site: SiteWorker, message, deletes=()):
    return decode_answer(site.handle(encode_request(message, deletes)))


def test_a_strict_site_keeps_its_data_and_audits_the_refusal():
    site = SiteWorker("clinic")
    data_id, target_id = site.add_dataset("toy", torch.randn(4, 2), torch.arange(4))
    with pytest.raises(PermissionDeniedError, match=rf"worker 'clinic' refuses to release object {data_id} \(data"):
        _ask(site, GetMessage(data_id))
    assert data_id in site.worker.objects
    audit = _ask(site, SiteQuery("audit"))
    assert [(r["obj_id"], r["command"], r["kind"]) for r in audit["refused"]] == [(data_id, "get", "data")]
    hello = _ask(site, SiteQuery("hello"))
    assert hello["datasets"] == {"toy": (data_id, target_id)} and hello["policy"]["release_data"] is False


@pytest.mark.filterwarnings("ignore:a worker has an open data-access policy")
def test_an_open_site_releases_a_copy_and_keeps_its_dataset():
    site = SiteWorker("library", policy="open")
    data = torch.arange(6.0).reshape(3, 2)
    data_id, _ = site.add_dataset("books", data.clone(), torch.zeros(3))
    assert torch.equal(_ask(site, GetMessage(data_id)), data)
    assert torch.equal(site.worker.objects[data_id], data)  # still there
    assert _ask(site, CommandMessage("torch.Tensor.sum", (ObjectRef(data_id),))).obj_id in site.worker.objects


def test_the_sites_datasets_cannot_be_replaced_or_deleted_from_outside():
    site = SiteWorker("clinic")
    data_id, target_id = site.add_dataset("toy", torch.randn(4, 2), torch.arange(4))
    _ask(site, SiteQuery("hello"), deletes=(data_id,))
    _ask(site, DeleteMessage(target_id))
    assert {data_id, target_id} <= site.worker.objects.keys()
    with pytest.raises(WorkerError, match=rf"refuses an ObjectMessage \(object {data_id}\): .* cannot be replaced"):
        _ask(site, ObjectMessage(data_id, torch.zeros(1)))
    from lightning_fed.workers.messages import DatasetMessage

    shard_id = 77
    assert _ask(site, DatasetMessage(shard_id, (data_id, target_id))) == 4
    with pytest.raises(WorkerError, match=f"cannot send object {shard_id} back: it is a TensorDataset"):
        _ask(site, GetMessage(shard_id))
    assert shard_id in site.worker.objects  # still at the site
    with pytest.raises(FederatedConfigError, match="already has a dataset 'toy'"):
        site.add_dataset("toy", torch.zeros(1), torch.zeros(1))


def test_a_get_whose_answer_cannot_be_sent_leaves_the_object_at_the_site():
    site = SiteWorker("clinic", max_message_bytes=2**16)
    site.add_dataset("toy", torch.randn(4, 2), torch.arange(4))
    _ask(site, ObjectMessage(5, torch.ones(1)))
    big = _ask(site, CommandMessage("torch.Tensor.repeat", (ObjectRef(5), 20_000))).obj_id  # 80 kB
    sparse = _ask(site, CommandMessage("torch.Tensor.to_sparse", (ObjectRef(5),))).obj_id
    held = dict(site.worker.objects)
    with pytest.raises(WireError, match=rf"the answer to a GetMessage \(object {big}\) is \d+ bytes .* over the message "
                                        r"limit of 65536 bytes"):  # fmt: skip
        _ask(site, GetMessage(big))
    with pytest.raises(WireError, match=r"cannot carry a Tensor .*layout torch.sparse_coo"):
        _ask(site, GetMessage(sparse))
    site.max_message_bytes = 2**20
    with pytest.raises(WireError, match=r"over the message limit of 65536 bytes"):  # the client's limit, sent along
        decode_answer(site.handle(encode_request(GetMessage(big), max_bytes=2**16)))
    assert site.worker.objects == held and not site.worker.audit_log.records  # nothing left, nothing released
    assert _ask(site, CommandMessage("torch.Tensor.sum", (ObjectRef(big),))).shape == ()
    assert torch.equal(_ask(site, GetMessage(big)), torch.ones(20_000))  # it waited at the site
    assert big not in site.worker.objects
    assert [(r.obj_id, r.command) for r in site.worker.audit_log] == [(big, "get")]


def test_a_site_holds_at_most_its_quota_of_the_servers_objects():
    site = SiteWorker("clinic", max_stored_bytes=1000)
    data_id, _ = site.add_dataset("toy", torch.randn(400, 2), torch.arange(400))  # the site's own 6 kB: not counted
    _ask(site, ObjectMessage(5, torch.ones(100)))  # 400 bytes of the server's
    held = dict(site.worker.objects)
    with pytest.raises(WorkerError, match=r"site 'clinic' holds 400 B of others' objects, its quota is 1000 B, and a "
                                          r"Tensor of 800 B "
                                          r"would pass it: it was not stored\. Free objects there .* or restart site "
                                          r"'clinic' with a larger --max-stored-mb \(now 0\.000953674\)"):  # fmt: skip
        _ask(site, CommandMessage("torch.Tensor.repeat", (ObjectRef(5), 2)))  # a result of 800 bytes
    with pytest.raises(WorkerError, match=r"its quota is 1000 B, and a Tensor of 1\.6 KiB"):
        _ask(site, CommandMessage("torch.Tensor.sum", (ObjectRef(data_id),), {"dim": 1}))  # results count too
    assert site.worker.objects == held  # nothing half-stored
    assert torch.equal(_ask(site, GetMessage(5)), torch.ones(100))  # what leaves frees its share
    _ask(site, ObjectMessage(6, torch.ones(250)))  # now 1000 bytes fit
    _ask(site, DeleteMessage(6))  # and deleting frees them
    _ask(site, ObjectMessage(7, torch.ones(250)))
    with pytest.raises(FederatedConfigError, match=r"`max_stored_bytes=0` is not valid: pass a number of bytes"):
        SiteWorker("clinic", max_stored_bytes=0)


def test_the_quota_error_is_no_side_channel_for_a_private_value_dependent_size():
    # an attacker reads sizes from quota errors: a result whose size depends on private values (how many entries are
    # nonzero) must be refused by the policy before it exists, so no quota error can carry its size
    site = SiteWorker("clinic", max_stored_bytes=1)
    data_id, _ = site.add_dataset("toy", torch.tensor([[0.0, 1.0], [2.0, 0.0], [3.0, 4.0]]), torch.arange(3))
    for command in ("torch.Tensor.nonzero", "torch.Tensor.unique"):
        with pytest.raises(PermissionDeniedError, match="release_shapes"):
            _ask(site, CommandMessage(command, (ObjectRef(data_id),)))
    with pytest.raises(WorkerError, match=r"a Tensor of 24 B would pass it"):  # a size the data's shape gives away
        _ask(site, CommandMessage("torch.Tensor.abs", (ObjectRef(data_id),)))


def _refusal(command: str, view: bool = False) -> str:
    which = r", a view of it \(it shares its memory\)" if view else ""
    return (rf"worker 'clinic' refuses to run {command}: it would write to object \d+ of the site's dataset 'toy'{which}, "
            "and the site's datasets are read-only from outside")  # fmt: skip


@pytest.mark.filterwarnings("ignore:a worker has an open data-access policy")
def test_the_sites_datasets_are_read_only_from_outside():
    site = SiteWorker("clinic", policy="open")
    data, targets = torch.randn(4, 2), torch.arange(4)
    data_id, target_id = site.add_dataset("toy", data.clone(), targets.clone())
    ref = ObjectRef(data_id)
    view = _ask(site, CommandMessage("torch.Tensor.__getitem__", (ref, slice(0, 1)))).obj_id
    flat = _ask(site, CommandMessage("torch.Tensor.view", (ref, -1))).obj_id
    mine = _ask(site, CommandMessage("torch.Tensor.clone", (ref,))).obj_id
    writes = [
        ("torch.Tensor.zero_", (ref,), {}, False),
        ("torch.Tensor.fill_", (ObjectRef(target_id), 7), {}, False),
        ("torch.Tensor.resize_", (ref, ()), {}, False),
        ("torch.Tensor.requires_grad_", (ref,), {}, False),
        ("torch.Tensor.__setitem__", (ref, 0, 1.0), {}, False),
        ("torch.Tensor.__iadd__", (ref, 1.0), {}, False),
        ("torch.Tensor.zero_", (ObjectRef(view),), {}, True),
        ("torch.Tensor.add_", (ObjectRef(flat), 1.0), {}, True),
        ("torch.add", (ObjectRef(mine), 1.0), {"out": ObjectRef(flat)}, True),
        ("torch.nn.functional.relu", (ObjectRef(view),), {"inplace": True}, True),
        ("torch.Tensor.grad.__set__", (ObjectRef(mine), ObjectRef(view)), {}, True),  # backward() would add into it
    ]
    for command, args, kwargs, is_view in writes:
        with pytest.raises(PermissionDeniedError, match=_refusal(command, is_view)):
            _ask(site, CommandMessage(command, args, kwargs))
    held = site.worker.objects
    assert torch.equal(held[data_id], data) and torch.equal(held[target_id], targets)
    assert not held[data_id].requires_grad and held[data_id].grad is None
    assert _ask(site, CommandMessage("torch.Tensor.zero_", (ObjectRef(mine),))) == ObjectRef(mine)  # a copy: fine
    assert _ask(site, SiteQuery("hello"))["lengths"] == {"toy": 4}


def test_a_write_the_site_did_not_recognise_is_reported(monkeypatch):
    from lightning_fed.transport import server

    site = SiteWorker("clinic")
    data_id, _ = site.add_dataset("toy", torch.ones(4, 2), torch.arange(4))
    monkeypatch.setattr(server, "written_ids", lambda *args: [])  # a write the check before the command misses
    with pytest.raises(WorkerError, match=r"ran torch.Tensor.zero_, and it changed one of the site's datasets"):
        _ask(site, CommandMessage("torch.Tensor.zero_", (ObjectRef(data_id),)))


def test_hello_answers_whatever_shape_a_dataset_has():
    site = SiteWorker("clinic")
    data_id, _ = site.add_dataset("toy", torch.ones(4, 2), torch.arange(4))
    site.worker.objects[data_id].resize_(())  # changed at the site itself: hello() still answers every client
    assert _ask(site, SiteQuery("hello"))["lengths"] == {"toy": 0}


def test_a_site_loads_an_mnist_folder_and_a_dataset_class(tmp_path):
    from tests.helpers.mnist_files import make_mnist_arrays, write_mnist_raw

    write_mnist_raw(tmp_path, num_train=6, num_test=2, seed=5, gz=True)
    data, targets = site_tensors(parse_data_flag(f"mnist-train={tmp_path / 'MNIST' / 'raw'}"))
    images, labels = make_mnist_arrays(6, seed=5)
    assert data.shape == (6, 1, 28, 28) and torch.equal(targets, torch.from_numpy(labels).long())
    assert torch.allclose(data[:, 0] * 0.3081 + 0.1307, torch.from_numpy(images).float() / 255, atol=1e-6)
    assert data.tags == {"mnist-train", "#mnist-train", "#data"}
    spec = DatasetSpec("survey", target="tests.transport.test_site.TinyDataset", kwargs={"n": 5}, tags=("#s",))
    data, targets = site_tensors(spec)
    assert data.shape == (5, 2) and targets.tolist() == [0, 1, 0, 1, 0] and "#s" in targets.tags
    with pytest.raises(
        FederatedConfigError, match=r"dataset 'x': no MNIST test files in .*t10k-images-idx3-ubyte\[.gz\]"
    ):
        load_mnist(DatasetSpec("x", mnist=str(tmp_path / "nothing"), split="test"))


def test_site_configuration_files(tmp_path):
    config = {"datasets": {"a": {"mnist": "/data/a", "split": "test", "tags": ["#a"]},
                           "b": {"class": "pkg.B", "kwargs": {"root": "/b"}}}}  # fmt: skip
    specs = specs_from_config(config)
    assert [(s.name, s.mnist, s.split, s.tags, s.target) for s in specs] == [
        ("a", "/data/a", "test", ("#a",), None), ("b", None, "train", (), "pkg.B")]  # fmt: skip
    with pytest.raises(FederatedConfigError, match=r"dataset 'a' has unknown settings \['path'\]"):
        specs_from_config({"datasets": {"a": {"path": "/x"}}})
    with pytest.raises(FederatedConfigError, match="needs exactly one source"):
        specs_from_config({"datasets": {"a": {"mnist": "/x", "class": "pkg.B"}}})
    with pytest.raises(FederatedConfigError, match=r"`split='dev'` is not valid"):
        DatasetSpec("a", mnist="/x", split="dev")
    with pytest.raises(FederatedConfigError, match=r"class 'no_such_pkg.Data' cannot be imported"):
        site_tensors(DatasetSpec("a", target="no_such_pkg.Data"))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ([], "site 'alice' has no certificates: pass the site's certificate folder"),
        (["--insecure", "--listen", "0.0.0.0:0"], "plaintext .* loopback addresses only .* got '0.0.0.0:0'"),
        (["--certs", "{tmp}"], "cannot read the CA certificate '.*ca.pem'"),
        (["--insecure", "--data", "mnist-train"], "`--data mnist-train` is not valid: pass NAME=PATH"),
        (["--insecure", "--max-message-mb", "0"], "`--max-message-mb 0.0` is not valid"),
        (
            ["--insecure", "--max-stored-mb", "nan"],
            r"`--max-stored-mb nan` is not valid: .* \(e\.g\. 1024, the default\)",
        ),
        (["--insecure", "--config", "{tmp}/site.json"], "`--config .*site.json` is not valid json"),
        (["--insecure", "--device", "gpu"], r"`--device 'gpu'` is not valid: pass cpu, cuda or cuda:N"),
    ],
)
def test_the_worker_program_exits_with_a_clear_message(tmp_path, capsys, argv, match):
    (tmp_path / "site.json").write_text("{not json")
    status = main(["--id", "alice", "--listen", "127.0.0.1:0", *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-fed worker: error: ")
    assert __import__("re").search(match, err), err


def test_the_worker_program_reads_a_config_file(tmp_path, capsys, monkeypatch):
    config = tmp_path / "site.json"
    config.write_text(json.dumps({"datasets": {"survey": {"class": "tests.transport.test_site.TinyDataset"}}}))
    from lightning_fed.transport import worker_main

    args = worker_main.build_parser().parse_args(["--id", "alice", "--insecure", "--config", str(config)])
    server = worker_main.build_server(args)
    assert server.site.datasets.keys() == {"survey"} and server.listen == "127.0.0.1:50051"
    assert server.site.worker._store.quota == 1024 * 2**20  # --max-stored-mb's default
    args = worker_main.build_parser().parse_args(["--id", "alice", "--insecure", "--max-stored-mb", "2.5"])
    assert worker_main.build_server(args).site.worker._store.quota == int(2.5 * 2**20)


def _train_request(model_name: str, model, batches):
    from lightning_fed.transport.training import TrainRequest

    return TrainRequest("run1", model_name, dict(model.hparams), model.state_dict(), "toy", batches, 0, False)


def test_a_sites_training_releases_only_what_its_policy_allows():
    """A round at a site: its model leaves only under release_model (audited), its loss only under release_scalars,
    and the error of a training step on its data keeps the data's values at the site."""
    from lightning_fed.privacy import DataAccessPolicy
    from lightning_fed.testing import BoringClassifier

    name = "lightning_fed.testing.BoringClassifier"
    data, targets = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])

    def site(policy):
        made = SiteWorker("toy-site", policy=policy, accepted_models={name: BoringClassifier})
        made.add_dataset("toy", data, targets)
        return made

    model = BoringClassifier(4, 2)
    keeps_updates = site(DataAccessPolicy(release_model=False))
    with pytest.raises(PermissionDeniedError, match=r"'toy-site' keeps its model updates \(release_model=False\)"):
        decode_answer(keeps_updates.handle(encode_request(_train_request(name, model, [[0, 1]]))))
    keeps_scalars = site(DataAccessPolicy(release_scalars=False))
    answer = decode_answer(keeps_scalars.handle(encode_request(_train_request(name, model, [[0, 1], [2, 3]]))))
    assert answer["loss_sum"] is None and answer["steps"] == 2
    assert [(r.kind, r.rule) for r in keeps_scalars.worker.audit_log] == [("update", "release_model")]
    strict = site("strict")
    answer = decode_answer(strict.handle(encode_request(_train_request(name, model, [[0, 1]]))))
    assert answer["loss_sum"] is not None and [r.rule for r in strict.worker.audit_log] == [
        "release_model",
        "release_scalars",
    ]
    # a failing step on the site's data (an out-of-range target, which torch would quote) keeps its message home
    bad_targets = SiteWorker("toy-site", accepted_models={name: BoringClassifier})
    bad_targets.add_dataset("toy", data, torch.tensor([0, 1, 7, 1]))
    with pytest.raises(WorkerError, match=r"failed to train .*BoringClassifier: IndexError \(details withheld") as err:
        decode_answer(bad_targets.handle(encode_request(_train_request(name, model, [[2, 3]]))))
    assert "7" not in str(err.value)


# -- the site's device -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "cuda", "match"),
    [
        ("gpu", (False, 0), r"`--device 'gpu'` is not valid: pass cpu, cuda or cuda:N"),
        ("mps", (False, 0), r"`--device 'mps'` is not supported: a site trains on cpu or cuda"),
        ("cuda", (False, 0), r"`--device 'cuda'`: this site has no usable CUDA device .* pass --device cpu"),
        ("cuda:3", (True, 2), r"`--device 'cuda:3'`: this site has 2 CUDA device\(s\), cuda:0 to cuda:1"),
    ],
)
def test_a_site_refuses_a_device_it_does_not_have(monkeypatch, device, cuda, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda[0])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda[1])
    with pytest.raises(FederatedConfigError, match=match):
        SiteWorker("clinic", device=device)


def _site_round(device: str, seen: list | None = None):
    """One FedAvg round of a BoringClassifier at a site on ``device``: the site's answer and the model it trained."""
    from lightning_fed.testing import BoringClassifier
    from lightning_fed.transport.training import SiteTraining

    class Seen(BoringClassifier):
        def training_step(self, batch, batch_idx):
            if seen is not None:
                seen.append((batch[0].device.type, self.device.type))
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    model = Seen(4, 2)
    site = SiteTraining({"Seen": Seen}, device=device)
    data, targets = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    done = site.fit(_train_request("Seen", model, [[0, 1, 2, 3], [4, 5, 6, 7], [1, 3, 5, 7]]), data, targets)
    return done, site._runs["run1"][1]


def test_what_a_site_answers_is_a_copy_on_its_cpu():
    seen: list = []
    done, trained = _site_round("cpu", seen)
    assert seen == [("cpu", "cpu")] * 3 and done.steps == 3 and done.samples == 12
    for answer in (done.start, done.end, list(done.state.values())):
        assert all(t.device.type == "cpu" for t in answer)
    end, state = [t.clone() for t in done.end], {k: v.clone() for k, v in done.state.items()}
    with torch.no_grad():  # the site's next round changes its model in place: the answer it gave must not change
        for p in trained.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(done.end, end))
    assert all(torch.equal(done.state[k], v) for k, v in state.items())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_site_with_a_gpu_trains_there_like_on_its_cpu():
    seen: list = []
    on_gpu, trained = _site_round("cuda", seen)
    on_cpu, _ = _site_round("cpu")
    assert seen == [("cuda", "cuda")] * 3 and next(trained.parameters()).device.type == "cuda"
    assert all(t.device.type == "cpu" for t in [*on_gpu.start, *on_gpu.end, *on_gpu.state.values()])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(on_gpu.end, on_cpu.end))
    assert on_gpu.loss_sum == pytest.approx(on_cpu.loss_sum, rel=1e-5)


def test_a_transfer_hook_that_fails_on_the_sites_data_keeps_the_values_home():
    """The module's transfer hooks run at the site on its real batches: an attacker's (or a buggy) hook that puts the
    batch into its error message gets the site's withheld-details error, with none of the values."""
    from lightning_fed.testing import BoringClassifier

    class Quoting(BoringClassifier):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            raise ValueError(f"batch was {batch[0].tolist()}")

    site = SiteWorker("toy-site", accepted_models={"Quoting": Quoting})
    site.add_dataset("toy", torch.full((4, 4), 7.25), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(WorkerError, match=r"failed to train Quoting: ValueError \(details withheld") as err:
        decode_answer(site.handle(encode_request(_train_request("Quoting", Quoting(4, 2), [[0, 1]]))))
    assert "7.25" not in str(err.value)


def test_what_a_command_makes_after_its_caller_stopped_waiting_is_freed():
    site = SiteWorker("clinic")
    data_id, _ = site.add_dataset("toy", torch.randn(4, 2), torch.arange(4))
    before = set(site.worker.objects)
    request = encode_request(CommandMessage("torch.max", (ObjectRef(data_id), 1)))  # two new tensors
    with pytest.raises(WireError, match=r"the caller stopped waiting for a CommandMessage \(torch.max\)"):
        decode_answer(site.handle(request, abandoned=lambda: True))  # a timed-out client: no pointer will name them
    assert set(site.worker.objects) == before
    made = decode_answer(site.handle(request, abandoned=lambda: False))
    assert {made.values.obj_id, made.indices.obj_id} <= set(site.worker.objects)  # a caller still waiting gets them
