"""quickstart: the ClientApp, as Flower's quickstart-pytorch client_app.py writes it;
``proximal_app`` is the same app with the one line a user adds for FedProx, FedRef and
FedMerge's client term (``strategies.ProximalTerm``)."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from strategies import ProximalTerm
from tests.quickstart.task import Net, load_data
from tests.quickstart.task import test as test_fn
from tests.quickstart.task import train as train_fn

app = ClientApp()
proximal_app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    return _train(msg, context, None)


@proximal_app.train()
def train_with_proximal_term(msg: Message, context: Context):
    return _train(msg, context, ProximalTerm.from_message(msg))


def _train(msg: Message, context: Context, proximal):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.to(device)
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    trainloader, _ = load_data(partition_id, num_partitions, 32)
    train_loss = train_fn(model, trainloader, 1, msg.content["config"]["lr"], device,
                          proximal)
    model_record = ArrayRecord(model.state_dict())
    metrics = {"train_loss": train_loss, "num-examples": len(trainloader.dataset)}
    content = RecordDict({"arrays": model_record, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
@proximal_app.evaluate()
def evaluate(msg: Message, context: Context):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.to(device)
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    _, valloader = load_data(partition_id, num_partitions, 32)
    eval_loss, eval_acc = test_fn(model, valloader, device)
    metrics = {"eval_loss": eval_loss, "eval_acc": eval_acc,
               "num-examples": len(valloader.dataset)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
