"""Flower's quickstart-pytorch app, as its README and files write it, with digits in place
of CIFAR-10 (offline): its own ClientApp, task and ``evaluate_fn``; the server function
builds a Pollen strategy with Flower's keywords (README, "Use a Pollen strategy in your
own Flower app")."""
