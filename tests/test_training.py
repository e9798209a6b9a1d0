import numpy as np
import torch

from pollen.adapters import travelling_state
from pollen.config import RunConfig
from pollen.data import client_split, load_task
from pollen.models import build_model
from pollen.training import evaluate, make_loader, torch_dataset, train

CPU = torch.device("cpu")


def _digits_loader(seed=0):
    config = RunConfig(partitioner="iid")
    task = load_task(config)
    train_split, _ = client_split(task, config, 0, 4)
    return make_loader(torch_dataset(train_split, "image", "cnn", 64), 32, True, seed)


def _distance(a, b):
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_training_lowers_the_loss():
    model = build_model(RunConfig(), 10)
    loader = _digits_loader()
    before = evaluate(model, loader, CPU).loss
    train(model, loader, epochs=3, lr=0.01, device=CPU, seed=1)
    assert evaluate(model, loader, CPU).loss < before * 0.7


def test_proximal_term_keeps_weights_near_the_start():
    start = build_model(RunConfig(), 10)
    origin = travelling_state(start)
    distances = {}
    for mu in (0.0, 10.0):
        model = build_model(RunConfig(), 10)
        train(model, _digits_loader(), epochs=3, lr=0.01, device=CPU, proximal_mu=mu, seed=1)
        distances[mu] = _distance(travelling_state(model), origin)
    assert distances[10.0] < 0.5 * distances[0.0]


def test_same_seed_same_weights():
    results = []
    for _ in range(2):
        model = build_model(RunConfig(), 10)
        train(model, _digits_loader(seed=5), epochs=1, lr=0.01, device=CPU, seed=5)
        results.append(travelling_state(model))
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name])
