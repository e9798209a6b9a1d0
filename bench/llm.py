"""Instruction tuning of SmolLM2-135M-Instruct (#17).

    python -m bench.llm memory [--quick]

memory: one training step (forward, backward, AdamW) of SmolLM2 on 8 AG News prompts of
128 tokens (classification as generation), counted by what each byte holds
(``bench.memory``): LoRA (r = 8 on q/k/v/o, Pollen's default), DeMA (HeteroTune's
adapter: rank 8, 4 experts, 2 banks on q/k/v/o) and full fine-tuning, each with and
without gradient checkpointing. HeteroTune's "~50% less peak memory" compares DeMA with
full fine-tuning. --quick: the tiny random Llama. Expected duration on 2 CPU cores:
about 6 minutes (--quick 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import AG_NEWS, DOCS, write_report
from bench.memory import StepMemory, step_memory

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTERS = ("lora", "dema", "full")
SEQUENCE, BATCH = 128, 8


def _config(model_name: str, checkpointing: bool):
    from strategies import run_config

    return run_config({"task": "instruct", "model": model_name, "dataset": str(AG_NEWS),
                       "class-names": "World,Sports,Business,Sci/Tech",
                       "max-seq-len": SEQUENCE, "partitioner": "iid",
                       "gradient-checkpointing": checkpointing})


def _batch(config) -> dict[str, torch.Tensor]:
    from pollen.data import load_task
    from pollen.training import make_loader, torch_dataset

    pairs = load_task(config).pool.select(range(4 * BATCH))
    tokens = torch_dataset(pairs, "instruct", config.model, config.max_seq_len)
    return next(iter(make_loader(tokens, BATCH, shuffle=False, seed=0)))


def _model(adapter: str, config) -> torch.nn.Module:
    from pollen.dema import inject_dema
    from pollen.dema.config import DemaConfig
    from pollen.models import build_backbone, build_model, prepare_for_training

    if adapter == "lora":
        return build_model(config, 0)
    backbone = prepare_for_training(build_backbone(config.model, 0, config.seed, config.task),
                                    config)
    if adapter == "dema":
        return inject_dema(backbone, DemaConfig(8, 4, 2, TARGETS, config.seed), config.model)
    for parameter in backbone.parameters():
        parameter.requires_grad = True
    return backbone


def memory(quick: bool, out_dir: Path) -> Path:
    from pollen.training import batch_loss

    model_name = "tiny-llama" if quick else "smollm2"
    cpu = torch.device("cpu")
    measured: dict[tuple[str, bool], StepMemory] = {}
    for checkpointing in (False, True):
        config = _config(model_name, checkpointing)
        batch = _batch(config)

        def step(model, optimizer):
            batch_loss(model, batch, cpu).backward()
            optimizer.step()

        for adapter in ADAPTERS:
            measured[adapter, checkpointing] = step_memory(_model(adapter, config), step)
            print(f"{adapter} checkpointing={checkpointing}: "
                  f"{measured[adapter, checkpointing]}", flush=True)
    tokens = int(batch["attention_mask"].sum())
    lines = [f"{model_name}, one step on {BATCH} AG News prompts padded to {SEQUENCE} tokens "
             f"({tokens} real tokens), float32, AdamW, CPU. MiB at the step's peak, by what "
             "the bytes hold (torch's memory profiler, checked against the tensors' own "
             "counts); 'activations' includes the backward's temporaries. 'step s' is the "
             "same step unprofiled (one step: a rough figure).", "",
             "| adapter | gradient checkpointing | trainable | weights | gradients | "
             "optimizer | activations | peak total | training state | step s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (adapter, checkpointing), m in measured.items():
        lines.append(f"| {adapter} | {'yes' if checkpointing else 'no'} | {m.trainable:,} | "
                     f"{m.weights:.0f} | {m.gradients:.1f} | {m.optimizer:.1f} | "
                     f"{m.activations:.0f} | {m.total:.0f} | {m.training_state:.0f} | "
                     f"{m.seconds:.2f} |")
    lines += ["", "| ratio | no checkpointing | checkpointing |", "|---|---|---|"]
    for adapter in ("lora", "dema"):
        for what in ("total", "training_state"):
            ratios = [getattr(measured[adapter, c], what) / getattr(measured["full", c], what)
                      for c in (False, True)]
            lines.append(f"| {adapter} / full, {what.replace('_', ' ')} | {ratios[0]:.2f} | "
                         f"{ratios[1]:.2f} |")
    for adapter in ADAPTERS:
        off, on = measured[adapter, False], measured[adapter, True]
        lines.append(f"| {adapter}: checkpointing / none, activations (step time) | "
                     f"{on.activations / off.activations:.2f} | "
                     f"({on.seconds / off.seconds:.2f}) |")
    name = "llm-memory-quick" if quick else "llm-memory"
    return write_report(name, "LLM training memory: LoRA, DeMA and full fine-tuning",
                        f"python -m bench.llm memory{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=("memory",))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    memory(args.quick, args.out)


if __name__ == "__main__":
    main()
