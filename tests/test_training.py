import numpy as np
import pytest
import torch

from pollen.adapters import travelling_state
from pollen.config import RunConfig
from pollen.data import client_split, load_task
from pollen.errors import ConfigError
from pollen.models import build_model
from pollen.optimizer import LocalOptimizer
from pollen.catalog import SGD_LR
from pollen.training import (balanced_class_weights, batch_loss, calibration_shift, evaluate,
                             make_loader, torch_dataset, train)
from strategies import run_config

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


@pytest.mark.parametrize("head_lr_scale", [1.0, 0.5, 0.0])
def test_sgd_step_is_w_minus_lr_times_the_gradient(head_lr_scale):
    """optimizer = sgd: one step of train() moves every weight by exactly -lr * grad
    (momentum and weight decay 0), where AdamW's first step is -lr * sign(grad); the
    head's by -lr * head-lr-scale * grad, so scale 0 (FedBABU) leaves it as it was."""
    config = run_config({"optimizer": "sgd", "head-lr-scale": head_lr_scale})
    loader = _digits_loader(seed=3)
    model = build_model(RunConfig(), 10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(3)
    batch = next(iter(make_loader(loader.dataset, 32, True, 3)))
    batch_loss(model, batch, CPU).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    train(model, make_loader(loader.dataset, 32, True, 3), epochs=1, lr=0.05, device=CPU,
          seed=3, max_steps=1, optimizer=config.local_optimizer)
    heads = [name for name in before if name.startswith("classifier.")]
    assert heads
    for name, p in model.named_parameters():
        lr = 0.05 * (head_lr_scale if name in heads else 1.0)
        torch.testing.assert_close(p.detach(), before[name] - lr * grads[name])
    assert config.local_optimizer == LocalOptimizer("sgd", 0.0, 0.0, head_lr_scale)


def test_head_lr_scale_is_refused_for_instruct():
    with pytest.raises(ConfigError, match="head-lr-scale .* classifier head; task 'instruct'"):
        run_config({"task": "instruct", "model": "smollm2", "head-lr-scale": 0.0})


def test_momentum_is_refused_without_sgd():
    with pytest.raises(ConfigError, match="momentum .* applies to optimizer 'sgd' only"):
        run_config({"momentum": 0.9})
    with pytest.raises(ConfigError, match="unknown optimizer 'lbfgs'"):
        run_config({"optimizer": "lbfgs"})
    assert run_config({"optimizer": "sgd", "momentum": 0.9}).local_optimizer.momentum == 0.9



@pytest.mark.parametrize("truth,predicted", [
    ([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2]),
    ([1, 1, 1, 0], [1, 1, 1, 1]),  # the majority-class predictor
    ([3, 3, 5], [3, 5, 5]),
])
def test_macro_f1_matches_sklearn(truth, predicted):
    from sklearn.metrics import f1_score

    from pollen.training import macro_f1
    assert macro_f1(torch.tensor(truth), torch.tensor(predicted)) == pytest.approx(
        f1_score(truth, predicted, average="macro"))


def test_the_step_schedule_drops_to_lr_min_at_lr_step_round():
    config = run_config({"lr-schedule": "step", "lr": 0.01, "lr-min": 0.0001,
                         "lr-step-round": 3, "num-server-rounds": 5})
    assert [config.round_lr(r) for r in range(1, 6)] == [0.01, 0.01, 0.0001, 0.0001, 0.0001]
    with pytest.raises(ConfigError, match="lr-step-round, the first round at lr-min, in "
                                          r"2..num-server-rounds \(5\); got 0"):
        run_config({"lr-schedule": "step", "lr": 0.01, "num-server-rounds": 5})
    with pytest.raises(ConfigError, match="lr-min .* must be below lr .* 'step'"):
        run_config({"lr-schedule": "step", "lr": 0.01, "lr-min": 0.1, "lr-step-round": 2})


def test_logit_calibration_is_fedlc_s_loss_on_a_hand_made_batch():
    """FedLC: the loss of logits f with label y is -log softmax(f - tau n^(-1/4))_y, an
    absent class counting 1e-8. Two examples, three classes, counts (16, 1, 0), tau 2."""
    shift = calibration_shift(np.array([16, 1, 0]), 2.0)
    torch.testing.assert_close(shift, torch.tensor([1.0, 2.0, 200.0]))
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])

    class Fixed(torch.nn.Module):
        def forward(self, inputs):
            return logits

    batch = {"inputs": torch.zeros(2), "label": torch.tensor([0, 1])}
    calibrated = logits - torch.tensor([1.0, 2.0, 200.0])  # [[1, -1.5, -199], [-1, 1, -201]]
    by_hand = -(torch.log(torch.exp(calibrated[0, 0]) / torch.exp(calibrated[0]).sum())
                + torch.log(torch.exp(calibrated[1, 1]) / torch.exp(calibrated[1]).sum())) / 2
    loss = batch_loss(Fixed(), batch, CPU, shift)
    torch.testing.assert_close(loss, by_hand)
    # first example: log(1 + e^-2.5 + e^-200), second: log(1 + e^-2 + e^-202)
    assert loss.item() == pytest.approx((np.log1p(np.exp(-2.5)) + np.log1p(np.exp(-2))) / 2)
    assert batch_loss(Fixed(), batch, CPU).item() > loss.item() + 0.15  # 0.265 uncalibrated


def test_the_class_balanced_loss_weighs_each_held_class_equally_on_a_hand_made_batch():
    """Counts (6, 2, 0): weights 8 / (2 * 6) and 8 / (2 * 2), the absent class 0; the
    loss is the weighted mean of the examples' cross-entropies."""
    weights = balanced_class_weights(np.array([6, 2, 0]))
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 2.0, 0.0]))
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0], [1.0, 1.0, 1.0]])

    class Fixed(torch.nn.Module):
        def forward(self, inputs):
            return logits

    batch = {"inputs": torch.zeros(3), "label": torch.tensor([0, 1, 0])}
    each = -torch.log_softmax(logits, dim=1)[torch.arange(3), batch["label"]]
    by_hand = (2 / 3 * each[0] + 2.0 * each[1] + 2 / 3 * each[2]) / (2 / 3 + 2.0 + 2 / 3)
    torch.testing.assert_close(batch_loss(Fixed(), batch, CPU, class_weight=weights), by_hand)
    assert batch_loss(Fixed(), batch, CPU).item() == pytest.approx(each.mean().item())
    # a one-class client's batches keep their plain mean
    single = balanced_class_weights(np.array([0, 5, 0]))
    torch.testing.assert_close(single, torch.tensor([0.0, 1.0, 0.0]))


def test_lr_auto_follows_the_optimizer():
    assert run_config({"model": "minilm"}).lr == 0.003
    assert run_config({"model": "minilm", "optimizer": "sgd"}).lr == SGD_LR["pretrained"]
    assert run_config({"model": "minilm", "optimizer": "sgd", "lr": 0.2}).lr == 0.2
    assert run_config({"optimizer": "sgd"}).lr == SGD_LR["cnn"] == 0.3
    with pytest.raises(ConfigError, match="lr 'auto' has no plain-SGD value .* set lr"):
        run_config({"model": "smollm2", "task": "instruct", "optimizer": "sgd"})


def test_the_client_trains_with_the_label_prior_terms_its_run_asks_for():
    """The client app's train step passes the class-balanced weights and FedLC's shift
    from its own train labels, only when the run config asks, and never for instruct."""
    import datasets

    from client_app.app import _label_prior_terms
    from client_app.job import ClientData

    split = datasets.Dataset.from_dict({"label": [0, 0, 0, 1]})
    data = ClientData(split, split, 3, "text")
    assert _label_prior_terms(run_config({}), data) == (None, None)
    shift, weights = _label_prior_terms(run_config({"class-balanced-loss": True}), data)
    assert shift is None
    torch.testing.assert_close(weights, balanced_class_weights(np.array([3, 1, 0])))
    shift, weights = _label_prior_terms(run_config({"logit-calibration": 1.0}), data)
    torch.testing.assert_close(shift, calibration_shift(np.array([3, 1, 0]), 1.0))
    assert weights is None
    instruct = ClientData(split, split, 3, "instruct")
    assert _label_prior_terms(run_config({"class-balanced-loss": True}), instruct) == (
        None, None)
