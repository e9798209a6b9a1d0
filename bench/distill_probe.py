"""Can brief distillation make a layer-dropped SmolLM2 a working model? (#34 item 3)

    python -m bench.distill_probe LAYERS SEQUENCES EPOCHS LR

The student keeps the first and last LAYERS/2 of SmolLM2's 30 decoder layers (the
layout with the lowest response loss before training, docs/benchmarks/
llm-depth-layouts.md), its embeddings (frozen; the LM head is tied to them) and final
norm. The distillation text ships with every Python: SEQUENCES paragraphs (200-700
characters) of the standard library's ``pydoc_data.topics`` as chat user turns, each
with the teacher's sampled answer (32 tokens, temperature 0.7, top-p 0.9). The student
minimises the forward KL to the teacher's next-token distribution at every real token
(AdamW at LR, 10-step warm-up then cosine, batch 8, gradient norm 1, EPOCHS passes).
Then it is scored as ``bench.llm depth-layouts`` scores a layout: exact match and
response loss on the federated suite's server test split (seed 0), zero-shot.

A probe, not a product path: Pollen builds no distilled family (the issue's item 3 is
open). Measured 2026-12-07 with LAYERS 10, SEQUENCES 400, EPOCHS 2, LR 3e-4 on one
thread beside two other benchmarks (by this script's first form, the same steps with the
KL written through softmax): generation 547 s, 100 steps at about 60 tokens/s
(KL 9.9 at the start of training to 1.67), exact match 0.000 and response loss 7.07
against 15.8 before distillation (all 30 layers: 0.345 and 1.20). With LAYERS 20,
SEQUENCES 400, EPOCHS 2, LR 2e-4 (2026-12-08, beside two or three other benchmarks; 53
minutes): KL 4.67 at the first step to 0.43-0.63 over the last ten, exact match 0.000
and response loss 7.62 against 7.97 before distillation.
"""

from __future__ import annotations

import copy
import math
import random
import sys

import torch


def main(layers: int, count: int, epochs: int, lr: float) -> None:
    import pydoc_data.topics

    from bench.llm import _keys, _layouts
    from pollen.models import build_causal_lm, build_tokenizer
    from server_app.app import ServerEvaluator
    from strategies import run_config

    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer = build_tokenizer("smollm2")
    teacher = build_causal_lm("smollm2", 0).eval()
    paragraphs = [p.strip() for topic in pydoc_data.topics.topics.values()
                  for p in topic.split("\n\n")
                  if 200 < len(p.strip()) < 700 and not p.strip().startswith(("*", "|", "   "))]
    rng.shuffle(paragraphs)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True)
               for p in paragraphs[:count]]
    tokenizer.padding_side = "left"
    sequences = []
    with torch.no_grad():
        for start in range(0, len(prompts), 16):
            encoded = tokenizer(prompts[start:start + 16], return_tensors="pt", padding=True,
                                truncation=True, max_length=160)
            answered = teacher.generate(**encoded, do_sample=True, temperature=0.7, top_p=0.9,
                                        max_new_tokens=32, pad_token_id=tokenizer.pad_token_id)
            for row, mask in zip(answered, encoded.attention_mask):
                sequences.append(row[int((mask == 0).sum()):])  # without the left padding
    kept = _layouts(layers, len(teacher.model.layers))[f"first and last {layers // 2}"]
    student = copy.deepcopy(teacher)
    student.model.layers = torch.nn.ModuleList(student.model.layers[i] for i in kept)
    for index, layer in enumerate(student.model.layers):
        layer.self_attn.layer_idx = index
    student.config.num_hidden_layers = len(kept)
    student.model.embed_tokens.weight.requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    steps = epochs * (len(sequences) // 8)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10)
                                                 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    student.train()
    for _ in range(epochs):
        order = list(range(len(sequences)))
        rng.shuffle(order)
        for start in range(0, len(order) - 7, 8):
            batch = [sequences[j] for j in order[start:start + 8]]
            width = max(len(b) for b in batch)
            ids = torch.full((8, width), tokenizer.pad_token_id)
            mask = torch.zeros((8, width), dtype=torch.long)
            for k, tokens in enumerate(batch):
                ids[k, :len(tokens)], mask[k, :len(tokens)] = tokens, 1
            with torch.no_grad():
                target = teacher(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
            predicted = student(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
            kl = (target.exp() * (target - predicted)).sum(-1)
            loss = (kl * mask).sum() / mask.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            print(f"KL {loss.item():.3f}", flush=True)
    config = run_config(_keys("smollm2", 0, 5, 10))
    evaluator = ServerEvaluator(config)
    model = evaluator.models[config.model]
    decoder = model.get_base_model().model
    decoder.layers, decoder.norm = student.model.layers, student.model.norm
    decoder.config.num_hidden_layers = len(kept)
    result = evaluator.evaluators[config.model](model, evaluator.loaders[config.model],
                                                evaluator.device)
    print(f"layers {kept}: exact match {result.accuracy:.3f}, response loss {result.loss:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
