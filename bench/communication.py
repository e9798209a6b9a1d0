"""Bytes per client per round: full fine-tuning vs LoRA vs DeMA, for every wire dtype.

    python -m bench communication [--quick]

For each model, the travelling tensors are encoded as a round sends them
(``pollen.records.to_array_record`` with the wire dtype) and counted as Flower puts them
on the wire (``array_bytes``). A FedAvg round sends a client the model twice (train and
evaluate messages) and receives it once, so a client's bytes per round are 3x the
encoded size; the table gives both directions. Ratio: to full fine-tuning in float32.
``python -m bench.wire agnews`` checks these sizes against real rounds' bytes_up/down.
--quick: tiny-bert instead of MiniLM. Expected duration: about 1 minute; --quick 20 s.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import RecordDict

from bench.common import pyplot, save_plot, write_report
from pollen.adapters import travelling_state
from pollen.config import WIRE_DTYPES
from pollen.models import build_backbone
from pollen.records import array_bytes, to_array_record
from strategies import build_model_for, run_config

NUM_CLASSES = 4


def _models(model: str) -> dict[str, dict]:
    lora = run_config({"model": model})
    dema = run_config({"model": model, "strategy": "heterotune"})
    full = build_backbone(model, NUM_CLASSES, lora.seed)
    return {
        f"{model}, full fine-tuning": {n: p.detach().numpy() for n, p in full.named_parameters()},
        f"{model} + LoRA (r {lora.lora_r}, {lora.lora_target_modules}) + head":
            travelling_state(build_model_for(lora, model, NUM_CLASSES)),
        f"{model} + DeMA (r {dema.method.dema_rank}, {dema.method.dema_experts} experts, "
        f"{dema.method.dema_banks} "
        "banks) + head": travelling_state(build_model_for(dema, model, NUM_CLASSES)),
        "digits CNN (all weights)": travelling_state(
            build_model_for(lora.replace(model="cnn"), "cnn", 10)),
    }


def run(quick: bool, out_dir: Path) -> Path:
    model = "tiny-bert" if quick else "minilm"
    models = _models(model)
    encoded = {(label, dtype): array_bytes(RecordDict({"arrays": to_array_record(t, dtype)}))
               for label, t in models.items() for dtype in WIRE_DTYPES}
    full = encoded[f"{model}, full fine-tuning", "float32"]
    lines = ["| model | parameters | wire dtype | down B/client/round | up B/client/round | "
             "total | ratio to full fine-tuning (float32) |", "|---|---|---|---|---|---|---|"]
    for label, tensors in models.items():
        parameters = sum(a.size for a in tensors.values())
        for dtype in WIRE_DTYPES:
            size = encoded[label, dtype]
            lines.append(f"| {label} | {parameters:,} | {dtype} | {2 * size:,} | {size:,} | "
                         f"{3 * size:,} | {size / full:.5f} |")
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 4))
    labels = list(models)
    width = 0.8 / len(WIRE_DTYPES)
    for i, dtype in enumerate(WIRE_DTYPES):
        axis.bar([x + i * width for x in range(len(labels))],
                 [3 * encoded[label, dtype] for label in labels], width, label=dtype)
    axis.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))],
                    [label.split(" (")[0] for label in labels], fontsize=7)
    axis.set(yscale="log", ylabel="bytes per client per round",
             title="Bytes on the wire per client and round (FedAvg)")
    axis.legend(fontsize=7)
    name = "communication-quick" if quick else "communication"
    lines += ["", save_plot(figure, out_dir, name)]
    return write_report(name, "Bytes per client per round",
                        f"python -m bench communication{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)
