"""quickstart: the model, data and loops, written as Flower's quickstart-pytorch task.py
writes them (a small CNN; scikit-learn's digits through flwr-datasets' IidPartitioner)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(6 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = x.view(-1, 6 * 4 * 4)
        return self.fc2(F.relu(self.fc1(x)))


def digits() -> Dataset:
    images, labels = load_digits(return_X_y=True)
    return Dataset.from_dict({"img": (images / 16.0).reshape(-1, 1, 8, 8).tolist(),
                              "label": labels.tolist()})


def _loader(partition: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
    partition = partition.with_format("torch")
    pairs = [(row["img"].float(), row["label"]) for row in partition]
    return DataLoader(pairs, batch_size=batch_size, shuffle=shuffle)


partitioner = None  # Cache the partitioner, as the quickstart caches its FederatedDataset


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """The client's partition of the first 1,400 images, 80% train and 20% test."""
    global partitioner
    if partitioner is None or partitioner.num_partitions != num_partitions:
        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = digits().select(range(1400))
    partition = partitioner.load_partition(partition_id)
    split = partition.train_test_split(test_size=0.2, seed=42)
    return _loader(split["train"], batch_size, True), _loader(split["test"], batch_size, False)


def load_centralized_dataset() -> DataLoader:
    """The last 397 images: the server's test set."""
    return _loader(digits().select(range(1400, 1797)), 128, False)


def load_server_data() -> list:
    """200 labelled images the server holds (for guided merging and central training)."""
    rows = digits().select(range(1200, 1400)).with_format("torch")
    return [(row["img"].float(), row["label"]) for row in rows]


def train(net, trainloader, epochs, lr, device, proximal=None):
    """``proximal``: a strategy's proximal term (``strategies.ProximalTerm``), or None."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
            objective = loss + proximal(net) if proximal is not None else loss
            objective.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net, testloader, device):
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images.to(device))
            loss += criterion(outputs, labels.to(device)).item()
            correct += (torch.max(outputs.data, 1)[1] == labels.to(device)).sum().item()
    return loss / len(testloader), correct / len(testloader.dataset)
