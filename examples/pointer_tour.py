"""The seed tutorial's API tour (sections I-V) on lightning_fed: pointers, remote arithmetic, backward at the worker.

Run: ``python examples/pointer_tour.py``
"""

import argparse
import sys

import torch

import lightning_fed as sy


def main(argv: list[str] | None = None) -> None:
    """The tour; ``argv`` (the command line's arguments: only ``--help``) are checked first."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args([] if argv is None else argv)
    # I. Imports and hook: add PySyft's methods to torch (opt-in, and `hook.unhook()` removes them)
    hook = sy.TorchHook(torch)

    # II. A virtual worker: a machine owned by a health clinic
    harmony_clinic = sy.VirtualWorker(hook=hook, id="clinic")

    # III. Sending a tensor gives back a pointer to it
    dna = torch.tensor([0, 1, 2, 1, 2])
    dna_ptr = dna.send(harmony_clinic)
    print(dna_ptr)
    print(harmony_clinic._objects)

    # IV. Getting it back: the clinic no longer holds it
    dna = dna_ptr.get()
    print(dna)
    print(harmony_clinic._objects)

    # V. Deep learning with pointers: arithmetic runs at the clinic, and so does backward()
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

    hook.unhook()


if __name__ == "__main__":
    main(sys.argv[1:])
