"""The seed tutorial's MNIST training code, run verbatim on tiny MNIST files read by torchvision's real loader."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torchvision import datasets, transforms

import lightning_fed as sy
from tests.helpers.mnist_files import write_mnist_raw


@pytest.fixture
def hook():
    hook = sy.TorchHook(torch)
    yield hook
    hook.unhook()


# --- the seed's code, as written (only the data root and the epoch count differ) ---------------------------------
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=32, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Conv2d(in_channels=32, out_channels=64, kernel_size=3, stride=1),
            nn.ReLU(),
        )
        self.fc = nn.Sequential(
            nn.Linear(in_features=64 * 12 * 12, out_features=128),
            nn.ReLU(),
            nn.Linear(in_features=128, out_features=10),
        )
        self.dropout = nn.Dropout2d(0.25)

    def forward(self, x):
        x = self.conv(x)
        x = F.max_pool2d(x, 2)
        x = x.view(-1, 64 * 12 * 12)
        x = self.fc(x)
        x = F.log_softmax(x, dim=1)
        return x


def train(args, model, device, train_loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        model = model.send(data.location)
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        model.get()
        if batch_idx % args["log_interval"] == 0:
            loss = loss.get()
            print(
                "Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(
                    epoch,
                    batch_idx * args["batch_size"],
                    len(train_loader) * args["batch_size"],
                    100.0 * batch_idx / len(train_loader),
                    loss.item(),
                )
            )


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    print(
        "\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(
            test_loss, correct, len(test_loader.dataset), 100.0 * correct / len(test_loader.dataset)
        )
    )


test.__test__ = False  # the seed's evaluation function, not a pytest test


@pytest.mark.cuda  # the seed's use_cuda=True: on the GPU when there is one
def test_seed_training_runs_verbatim(tmp_path, hook, capsys):
    write_mnist_raw(tmp_path, num_train=256, num_test=64, gz=False)  # extracted: torchvision needs no download
    root = str(tmp_path)
    westside_school = sy.VirtualWorker(hook, id="westside")
    grapevine_high = sy.VirtualWorker(hook, id="grapevine")
    args = {"use_cuda": True, "batch_size": 64, "test_batch_size": 1000, "lr": 0.01, "log_interval": 1, "epochs": 2}
    use_cuda = args["use_cuda"] and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    federated_train_loader = sy.FederatedDataLoader(
        datasets.MNIST(
            root,
            train=True,
            download=True,
            transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]),
        ).federate((grapevine_high, westside_school)),
        batch_size=args["batch_size"],
        shuffle=True,
    )
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(
            root,
            train=False,
            transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]),
        ),
        batch_size=args["test_batch_size"],
        shuffle=True,
    )
    model = Net().to(device)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = optim.SGD(model.parameters(), lr=args["lr"])
    logging.info("Starting training !!")
    for epoch in range(1, args["epochs"] + 1):
        train(args, model, device, federated_train_loader, optimizer, epoch)
        test(model, device, test_loader)

    out = capsys.readouterr().out
    assert out.count("Train Epoch: 1 [") == len(federated_train_loader) == 4
    assert "Test set: Average loss:" in out and "Accuracy: " in out and "/64 (" in out
    # the model came home trained, and the schools hold only what live pointers still reference
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert {type(obj).__name__ for obj in westside_school._objects.values()} <= {"Subset", "Tensor"}
    assert sum(type(o).__name__ == "Subset" for o in grapevine_high._objects.values()) == 1
