"""Pollen's BERT classifiers read the attention-masked mean of the last hidden states."""

import torch

from pollen.meanpool import MeanPooledBertForSequenceClassification
from pollen.models import build_backbone


def test_the_head_reads_the_masked_mean_and_padding_changes_nothing():
    model = build_backbone("tiny-bert", 3, seed=0).eval()
    assert isinstance(model, MeanPooledBertForSequenceClassification)
    ids = torch.tensor([[101, 2054, 2003, 102]])
    short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    padded = model(input_ids=padded_ids, attention_mask=padded_mask).logits
    torch.testing.assert_close(padded, short)
    hidden = model.bert(input_ids=ids).last_hidden_state
    torch.testing.assert_close(short, model.classifier(hidden.mean(dim=1)))


def test_minilm_loads_its_pretrained_encoder_under_the_mean_pooling_head():
    from transformers import AutoModel

    from pollen.models import minilm_dir
    ours = build_backbone("minilm-l2", 4, seed=0)
    reference = AutoModel.from_pretrained(minilm_dir(), num_hidden_layers=2)
    for name, value in reference.state_dict().items():
        if not name.startswith("pooler"):
            torch.testing.assert_close(ours.bert.state_dict()[name], value)
    assert not hasattr(ours.bert, "pooler") or ours.bert.pooler is None
