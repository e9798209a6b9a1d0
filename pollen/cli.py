"""``pollen``: the adapter registry, and a run's LLM adapter, from the command line.

    pollen registry serve --address 0.0.0.0:9094 --store DIR --token-file FILE \\
        --certfile server.crt --keyfile server.key          (or --insecure, loopback only)
    pollen adapters list  --registry HOST:PORT [--run-id RUN] --ca-cert ca.crt | --insecure
    pollen adapters fetch --registry HOST:PORT [--client-id X | --family F] [--round N]
        [--run-id RUN] [--model NAME] --out DIR --ca-cert ca.crt | --insecure

    pollen generate --run RUN_DIR --prompt "..." [--max-new-tokens 64]
    pollen export   --run RUN_DIR --merged OUT
    pollen check    [--device cuda] [--model minilm] [--steps 20] [--batch-size 16]

``fetch`` writes a peft-format folder (``PeftModel.from_pretrained`` loads it); run again
after an interruption, it resumes the transfer from where it stopped. ``generate`` loads a
task=instruct run's base model and final adapter and prints the greedy answer to the
prompt (through the model's chat template); ``export`` writes base + adapter merged
(peft's ``merge_and_unload``) as a transformers model folder, with the tokenizer.
``check`` is an edge machine's smoke test: it trains the model with LoRA for a few steps on
the device a node config would ask for (``--device cuda`` fails, naming the problem, when
torch sees no CUDA) and prints what it found and how fast it ran.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from pollen.v1 import adapters_pb2 as pb


def _channel(args) -> grpc.Channel:
    from pollen.registry.client import connect

    if args.insecure:
        return connect(args.registry, None)
    if not args.ca_cert:
        sys.exit("pass --ca-cert (the deployment's ca.crt), or --insecure for a plaintext "
                 "registry on this machine")
    return connect(args.registry, Path(args.ca_cert).read_bytes())


def _serve(args) -> None:
    from pollen.registry.server import serve

    token = Path(args.token_file).read_text().strip()
    host = args.address.rsplit(":", 1)[0]
    if args.insecure:
        if host not in ("localhost", "127.0.0.1", "[::1]"):
            sys.exit("--insecure serves plaintext and is for localhost only")
        server, port = serve(args.address, Path(args.store), token)
    else:
        if not (args.certfile and args.keyfile):
            sys.exit("pass --certfile and --keyfile (TLS), or --insecure on localhost")
        server, port = serve(args.address, Path(args.store), token,
                             Path(args.certfile).read_bytes(), Path(args.keyfile).read_bytes())
    print(f"adapter registry on port {port}, store {args.store}", flush=True)
    server.wait_for_termination()


def _list(args) -> None:
    from pollen.registry.client import list_adapters

    with _channel(args) as channel:
        for entry in list_adapters(channel, args.run_id):
            print(json_format.MessageToJson(entry, indent=None))


def _fetch(args) -> None:
    from pollen.registry.client import fetch, write_adapter_folder

    if args.client_id and args.family:
        sys.exit("pass --client-id or --family, not both")
    scope = (pb.SCOPE_CLIENT if args.client_id else
             pb.SCOPE_FAMILY if args.family else pb.SCOPE_GLOBAL)
    key = pb.AdapterKey(scope=scope, name=args.client_id or args.family, run_id=args.run_id,
                        round=args.round)
    out = Path(args.out)
    started = time.perf_counter()
    with _channel(args) as channel:
        result = fetch(channel, key, out)
    manifest = write_adapter_folder(result.data, out, args.model, args.seed)
    print(f"wrote {out}: round {manifest.round} of run '{manifest.run_id}' "
          f"({len(result.data)} bytes, {result.received} received in "
          f"{time.perf_counter() - started:.2f}s"
          f"{f', resumed at byte {result.resumed_from}' if result.resumed_from else ''})")


def _run_model(run_dir: Path):
    """The run's base model with its final adapter, the tokenizer, and the run config
    (its shared keys: generation needs no method)."""
    import json

    from peft import PeftModel

    from pollen.config import RunConfig
    from pollen.models import build_backbone, build_tokenizer

    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{run_dir} is not a Pollen run folder (no config.json)")
    values = json.loads(config_file.read_text())
    config = RunConfig.from_mapping({k: v for k, v in values.items() if "." not in k})
    if config.task != "instruct":
        raise ValueError(f"run {run_dir.name} fine-tuned a classifier (task "
                         f"'{config.task}'); generate and export need task 'instruct'")
    if not (run_dir / "model" / "adapter_config.json").is_file():
        raise ValueError(f"{run_dir} holds no final adapter (model/adapter_config.json): "
                         "did the run finish?")
    base = build_backbone(config.model, 0, config.seed, config.task)
    return PeftModel.from_pretrained(base, run_dir / "model"), build_tokenizer(config.model)


def _generate(args) -> None:
    import torch

    from pollen.device import resolve_device
    from pollen.instruct import generate, prompt_ids

    device = resolve_device(args.device)
    model, tokenizer = _run_model(Path(args.run_dir))
    ids = prompt_ids(tokenizer, args.prompt)
    batch = {"input_ids": torch.tensor([ids]), "prompt_length": torch.tensor([len(ids)])}
    with torch.no_grad():
        print(generate(model.to(device).eval(), tokenizer, batch, device,
                       args.max_new_tokens)[0])


def _export(args) -> None:
    model, tokenizer = _run_model(Path(args.run_dir))
    out = Path(args.merged)
    model.merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"wrote the merged model (base + adapter, transformers format) to {out}")


CHECK_TEXTS = ("Stocks rally as oil prices fall on supply hopes",
               "The home side wins the final after extra time",
               "A new probe reaches orbit around the red planet",
               "Leaders meet to discuss the border agreement")


def _check(args) -> None:
    """Train ``--steps`` LoRA steps of ``--model`` on 4 short labelled sentences."""
    import datasets
    import torch

    from pollen.config import RunConfig
    from pollen.device import node_device, peak_memory_mb, reset_peak_memory
    from pollen.models import build_model
    from pollen.training import make_loader, torch_dataset, train

    config = RunConfig(model=args.model, device=args.device)
    device = node_device(config)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}); device "
          f"{device} ({where})")
    rows = datasets.Dataset.from_dict({"text": list(CHECK_TEXTS) * args.batch_size,
                                       "label": list(range(len(CHECK_TEXTS))) * args.batch_size})
    loader = make_loader(torch_dataset(rows, "text", args.model, 32), args.batch_size,
                         shuffle=True, seed=0)
    started = time.perf_counter()
    model = build_model(config, num_classes=len(CHECK_TEXTS))
    built = time.perf_counter() - started
    reset_peak_memory(device)
    result = train(model, loader, epochs=1, lr=1e-3, device=device, max_steps=args.steps)
    if not result.loss == result.loss:  # NaN
        raise ValueError(f"training on {device} gave a NaN loss")
    print(f"{args.model} + LoRA built in {built:.1f} s; {args.steps} steps of "
          f"{args.batch_size} in {result.seconds:.1f} s "
          f"({args.steps * args.batch_size / result.seconds:.0f} samples/s), loss "
          f"{result.loss:.3f}, peak memory {peak_memory_mb(device):.0f} MiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pollen", description=__doc__.splitlines()[0])
    groups = parser.add_subparsers(dest="group", required=True)
    registry = groups.add_parser("registry").add_subparsers(dest="command", required=True)
    serve = registry.add_parser("serve", help="run an adapter registry")
    serve.add_argument("--address", default="0.0.0.0:9094")
    serve.add_argument("--store", required=True)
    serve.add_argument("--token-file", required=True)
    serve.add_argument("--certfile")
    serve.add_argument("--keyfile")
    serve.add_argument("--insecure", action="store_true")
    serve.set_defaults(run=_serve)

    adapters = groups.add_parser("adapters").add_subparsers(dest="command", required=True)
    for name, run, helptext in (("list", _list, "list the stored adapters"),
                                ("fetch", _fetch, "fetch one adapter into a peft folder")):
        command = adapters.add_parser(name, help=helptext)
        command.add_argument("--registry", required=True, help="HOST:PORT")
        command.add_argument("--ca-cert")
        command.add_argument("--insecure", action="store_true")
        command.add_argument("--run-id", default="")
        command.set_defaults(run=run)
        if name == "fetch":
            command.add_argument("--client-id", default="")
            command.add_argument("--family", default="")
            command.add_argument("--round", type=int, default=0, help="0 = the latest")
            command.add_argument("--model", default="", help="the base model this machine runs")
            command.add_argument("--seed", type=int, default=42)
            command.add_argument("--out", required=True)
    generate = groups.add_parser("generate", help="answer a prompt with a run's LLM adapter")
    generate.add_argument("--run", dest="run_dir", required=True, help="the run folder")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    generate.set_defaults(run=_generate)
    export = groups.add_parser("export", help="write a run's LLM with its adapter merged in")
    export.add_argument("--run", dest="run_dir", required=True, help="the run folder")
    export.add_argument("--merged", required=True, help="the output folder")
    export.set_defaults(run=_export)
    check = groups.add_parser("check", help="train a few LoRA steps on this machine's device")
    check.add_argument("--device", default="auto", help="auto, cpu or cuda")
    check.add_argument("--model", default="minilm", help="a classifier of the catalog")
    check.add_argument("--steps", type=int, default=20)
    check.add_argument("--batch-size", type=int, default=16)
    check.set_defaults(run=_check)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except grpc.RpcError as error:
        sys.exit(f"registry: {error.code().name}: {error.details()}")
    except ValueError as error:  # BundleError, ConfigError, LayoutError
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
