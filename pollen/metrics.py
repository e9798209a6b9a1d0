"""Metrics that clients and the server compute alike, with no model code."""

from __future__ import annotations

import torch

ONE_CLASS_SHARE = 0.95  # a model predicting one class this often is reported (server_app)


def predicted_class_max_share(predicted: list[int] | torch.Tensor) -> float:
    """The share of the examples given the most frequent prediction: near the majority
    class's share (or 1) is a model that has learnt the label prior, not the task."""
    values = torch.as_tensor(predicted)
    return float(torch.unique(values, return_counts=True)[1].max()) / len(values)
