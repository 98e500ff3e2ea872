"""The seed tutorial's API tour (sections I-V), verbatim after ``import lightning_fed as sy``, prints what it printed.

Only the object ids differ from run to run; everything else must match the seed's output line by line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

import lightning_fed as sy

POINTER = re.compile(r"^\(Wrapper\)>\[PointerTensor \| me:(\d+) -> clinic:(\d+)\]$")


@pytest.fixture
def hook() -> Iterator[sy.TorchHook]:
    # The seed calls sy.TorchHook(torch) itself; the hook is idempotent, so it gets this one, unhooked afterwards.
    hook = sy.TorchHook(torch)
    yield hook
    hook.unhook()


def run_seed_sections_one_to_five() -> dict[str, object]:
    # I. Imports and Hook
    import torch

    import lightning_fed as sy

    hook = sy.TorchHook(torch)

    # II. Creating a Virtual Worker
    harmony_clinic = sy.VirtualWorker(hook=hook, id="clinic")

    # III. Sending the Tensors
    dna = torch.tensor([0, 1, 2, 1, 2])
    dna_ptr = dna.send(harmony_clinic)
    print(dna_ptr)
    print(harmony_clinic._objects)

    # IV. Getting back the Tensors
    dna = dna_ptr.get()
    print(dna)
    print(harmony_clinic._objects)

    # V. Doing Deep Learning with Pointer Tensors
    a = torch.tensor([3.14, 6.28]).send(harmony_clinic)
    b = torch.tensor([6.14, 3.28]).send(harmony_clinic)
    c = a + b
    print(c)

    train = torch.tensor([2.4, 6.2], requires_grad=True).send(harmony_clinic)
    label = torch.tensor([2, 6.0]).send(harmony_clinic)
    loss = (train - label).abs().sum()
    loss.backward()
    train = train.get()
    print(train)
    print(train.grad)

    return {"hook": hook, "clinic": harmony_clinic, "dna_ptr": dna_ptr, "c": c, "a": a, "b": b}


def test_seed_sections_one_to_five_print_the_seeds_output(hook: sy.TorchHook, capsys: pytest.CaptureFixture) -> None:
    seen = run_seed_sections_one_to_five()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7, lines

    dna_ptr_line = POINTER.match(lines[0])
    assert dna_ptr_line is not None, lines[0]
    pointer_id, remote_id = dna_ptr_line.groups()
    assert lines[1] == f"{{{remote_id}: tensor([0, 1, 2, 1, 2])}}"  # the same id as in the pointer's repr
    assert lines[2] == "tensor([0, 1, 2, 1, 2])"
    assert lines[3] == "{}"
    c_line = POINTER.match(lines[4])
    assert c_line is not None, lines[4]
    assert c_line.group(2) != remote_id
    assert lines[5] == "tensor([2.4000, 6.2000], requires_grad=True)"
    assert lines[6] == "tensor([1., 1.])"

    # the ids printed are the pointer's own
    assert int(pointer_id) == seen["dna_ptr"].id
    assert int(remote_id) == seen["dna_ptr"].id_at_location
    assert int(c_line.group(2)) == seen["c"].id_at_location
    assert len(pointer_id) == len(remote_id) == 11  # PySyft's 11-digit ids
    assert seen["hook"] is hook
    assert hook.workers == {"clinic": seen["clinic"]}


def test_seed_section_five_values(hook: sy.TorchHook) -> None:
    seen = run_seed_sections_one_to_five()
    assert torch.allclose(seen["c"].get(), torch.tensor([9.28, 9.56]))
    clinic = seen["clinic"]
    assert set(clinic._objects) == {seen["a"].id_at_location, seen["b"].id_at_location}
