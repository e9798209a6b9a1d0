"""A BERT sequence classifier whose head reads the attention-masked mean of the last
hidden states, for Pollen's BERTs (MiniLM at any depth, the tiny random BERTs).

Why not transformers' ``BertForSequenceClassification``: its head reads the pooler
(tanh of a dense layer over [CLS]). all-MiniLM-L6-v2 was trained by sentence-transformers
to embed a text as the mean of its token states (the package's ``1_Pooling/config.json``:
``pooling_mode_mean_tokens``); the pooler never took part in that training. Its output
varies little between texts (AG News Business vs Sci/Tech, 800 texts: std 0.043 per
dimension, against 0.15 for the mean), so a head on it must grow large weights before it
separates anything; with small or regularised steps it learns the class prior first: a
logistic-regression probe at C = 0.01 scored 0.56 on the pooler (the majority class is
0.576) and 0.84 on the mean (``python -m bench.labelskew probe``,
docs/benchmarks/labelskew-probe.md). That
is Pollen's share of FedAvg's majority-class predictor under label skew (#19). Neither
transformers nor peft has a mean-pooling classification head (sentence-transformers
pools but has no classifier peft can wrap), hence this class; the module names match
BertForSequenceClassification's (``bert``, ``classifier``), so LoRA targets, DeMA and
Mosaic's head hook are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPooledBertForSequenceClassification(BertPreTrainedModel):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout
                                  if config.classifier_dropout is not None
                                  else config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_) -> SequenceClassifierOutput:
        """mean_t(m_t h_t) / sum_t m_t over the last hidden states h and the attention
        mask m, then dropout and the linear head. peft's extra arguments (return_dict,
        output_attentions, ...) are accepted and have no effect: the output is always
        this dataclass."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids,
                           inputs_embeds=inputs_embeds).last_hidden_state
        if attention_mask is None:
            mask = hidden.new_ones(hidden.shape[:2])
        else:
            mask = attention_mask.to(hidden.dtype)
        mask = mask.unsqueeze(-1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = (nn.functional.cross_entropy(logits, labels) if labels is not None else None)
        return SequenceClassifierOutput(loss=loss, logits=logits)
