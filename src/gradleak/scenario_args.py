"""The scenario's flags: one surface for every command that simulates clients (audit, labels, sweep, fl-demo)
and for the Flower apps' flat run_config, which names its keys as the flags."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli_args import fraction, image_size, int_range, nonnegative_int, positive_float, positive_int, seed, step_counts
from .errors import InputError
from .observation_schema import MAX_BATCH, MAX_CLIENTS, MAX_LOCAL_STEPS
from .scenario import Scenario, defense_spec
from .servers import HONEST, parse_server


def add_scenario_args(
    p: argparse.ArgumentParser, *, model_kwargs: dict[str, dict[str, Any]] | None = None, **defaults: Any
) -> None:
    """The flags of :class:`~gradleak.scenario.Scenario`, each typed and bounded (:mod:`gradleak.cli_args`), so a
    bad value is a usage error before any work. ``defaults`` (e.g. ``model="mlp"``) override the
    scenario's defaults for one command; ``model_kwargs`` maps a model name to the constructor arguments it gets
    when ``--model-kwargs`` is not given (e.g. ``{"mlp": {"width": 64}}``)."""
    d = Scenario()
    g = p.add_argument_group("scenario (the simulated client round)")
    g.add_argument("--model", default=d.model, help="zoo name (see `gradleak list`) or module:factory")
    g.add_argument(
        "--model-kwargs",
        type=json.loads,
        metavar="JSON",
        help="model constructor arguments, e.g. '{\"width\": 64}' (default: "
        + (", ".join(f"{m}: {json.dumps(k)}" for m, k in (model_kwargs or {}).items()) or "none")
        + ")",
    )
    g.add_argument("--weights", help="model weights (.safetensors)")
    g.add_argument("--head", help="module path of the classification head, for your own models")
    g.add_argument("--data", default=d.dataset, help="bundled dataset name or a path to your data")
    g.add_argument("--image-size", type=image_size, help="resize images to this many pixels (default: the dataset's)")
    g.add_argument("--batch-size", type=positive_int(MAX_BATCH), default=d.batch_size)
    g.add_argument(
        "--unique-labels",
        action="store_true",
        help="draw a batch of distinct labels (default: as a data loader draws, labels may repeat)",
    )
    g.add_argument("--protocol", choices=("fedsgd", "fedavg"), default="fedsgd")
    g.add_argument("--local-steps", type=positive_int(MAX_LOCAL_STEPS), default=5, help="FedAvg local SGD steps")
    g.add_argument("--local-lr", type=positive_float(), default=1e-2, help="FedAvg local learning rate")
    g.add_argument(
        "--local-batch", type=positive_int(MAX_BATCH), help="FedAvg local mini-batch size (default: whole batch)"
    )
    g.add_argument(
        "--assume-local-steps",
        type=positive_int(MAX_LOCAL_STEPS),
        help="what the attacker assumes, if not the true value",
    )
    g.add_argument("--assume-local-lr", type=positive_float(), help="what the attacker assumes, if not the true value")
    g.add_argument(
        "--assume-local-batch", type=positive_int(MAX_BATCH), help="what the attacker assumes, if not the true value"
    )
    g.add_argument(
        "--defense",
        action="append",
        default=[],
        metavar="SPEC",
        help="e.g. clip:4, noise:0.01, laplace:0.01, sparsify:0.9, quantize:8 (repeatable, in order)",
    )
    g.add_argument("--label-smoothing", type=fraction, default=d.label_smoothing, metavar="EPS")
    g.add_argument(
        "--mixup", type=positive_float(), metavar="ALPHA", help="client trains with mixup Beta(ALPHA, ALPHA)"
    )
    g.add_argument(
        "--bn-mode",
        choices=("train", "eval"),
        default=d.bn_mode,
        help="BatchNorm of the client: eval = the running statistics the server sent (default); "
        "train = batch statistics (for one image they hide its brightness and contrast)",
    )
    g.add_argument(
        "--secagg",
        type=positive_int(MAX_CLIENTS),
        default=d.clients,
        metavar="N",
        help="secure aggregation: the server sees only the mean of N clients' updates, each client with its "
        "own --batch-size samples (default: 1, one client's update)",
    )
    g.add_argument(
        "--server",
        default=HONEST,
        metavar="SPEC",
        help="threat model of the server: honest (default) or a malicious strategy that modifies the model it "
        "sends, e.g. imprint:bins=128 (see `gradleak list`)",
    )
    g.add_argument(
        "--victim-train-steps",
        type=nonnegative_int(),
        default=d.train_steps,
        metavar="N",
        help="train the server's model for N SGD steps first, on data disjoint from the client's batch (which is "
        "then drawn from the held-out part); the report gives its held-out test accuracy (default 0: untrained)",
    )
    g.add_argument(
        "--victim-train-batch", type=int_range(2, MAX_BATCH), default=d.train_batch, help="its training batch size"
    )
    g.add_argument("--victim-train-lr", type=positive_float(), default=d.train_lr, help="its SGD learning rate")
    g.add_argument("--seed", type=seed, default=d.seed)
    g.add_argument("--device", default="cpu", help="only 'cpu' is supported in this version")
    p.set_defaults(default_model_kwargs=model_kwargs or {}, **{k.replace("-", "_"): v for k, v in defaults.items()})


def add_victim_checkpoints(p: argparse.ArgumentParser) -> None:
    """``--victim-checkpoints 0,100,1000``: run the command at several checkpoints of one training of the server's
    model (:mod:`gradleak.over_training`)."""
    p.add_argument(
        "--victim-checkpoints",
        type=step_counts,
        metavar="N,N,...",
        help="audit at these training steps of the server's model (increasing, e.g. 0,100,1000; one training, the same "
        "held-out client batch at each) and plot leakage against training; the training settings are "
        "--victim-train-batch/-lr",
    )


def scenario_from_args(a: argparse.Namespace) -> Scenario:
    from .defenses import parse_defense
    from .protocols import FedAvg, FedSGD

    if a.device != "cpu":
        raise InputError(f"device {a.device!r} is not supported yet; use --device cpu")
    kwargs = a.model_kwargs if a.model_kwargs is not None else a.default_model_kwargs.get(a.model, {})
    if not isinstance(kwargs, dict):
        raise InputError(f"--model-kwargs must be a JSON object, got {kwargs!r}")
    protocol = FedAvg(a.local_steps, a.local_lr, a.local_batch) if a.protocol == "fedavg" else FedSGD()
    assumed = None
    guesses = (a.assume_local_steps, a.assume_local_lr, a.assume_local_batch)
    if any(v is not None for v in guesses):
        if a.protocol != "fedavg":
            raise InputError("--assume-local-* only apply with --protocol fedavg")
        steps, lr, batch = guesses
        assumed = FedAvg(
            a.local_steps if steps is None else steps,
            a.local_lr if lr is None else lr,
            a.local_batch if batch is None else batch,
        )
    return Scenario(
        model=a.model,
        model_kwargs=dict(kwargs),
        weights=a.weights,
        head=a.head,
        dataset=a.data,
        image_size=a.image_size,
        batch_size=a.batch_size,
        unique_labels=a.unique_labels,
        protocol=protocol,
        defenses=tuple(parse_defense(s) for s in a.defense),
        label_smoothing=a.label_smoothing,
        mixup=a.mixup,
        bn_mode=a.bn_mode,
        seed=a.seed,
        assumed_protocol=assumed,
        clients=a.secagg,
        server=parse_server(a.server),
        train_steps=a.victim_train_steps,
        train_batch=a.victim_train_batch,
        train_lr=a.victim_train_lr,
    )


def scenario_from_config(config: dict[str, Any]) -> Scenario:
    """A scenario from flat ``flag: value`` pairs named as the command-line flags (Flower's run_config);
    ``defenses`` holds ``;``-separated specs. Keys that are no scenario flag are ignored."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_scenario_args(parser)
    argv: list[str] = []
    for key, value in config.items():
        if key == "defenses":
            argv += [x for spec in str(value).split(";") if spec.strip() for x in ("--defense", spec.strip())]
        elif isinstance(value, bool):
            argv += [f"--{key}"] if value else []
        elif key == "mixup" and not value:
            continue
        elif value is not None and value != "":
            argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    try:
        args, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, ValueError) as e:
        raise InputError(f"bad scenario setting in the config: {e}") from None
    return scenario_from_args(args)


def scenario_config(sc: Scenario) -> dict[str, Any]:
    """The flat ``flag: value`` form of ``sc`` that :func:`scenario_from_config` reads back (weights, head, the
    attacker's assumptions and the server model's training before the round are not part of it)."""
    cfg: dict[str, Any] = {
        "model": sc.model,
        "model-kwargs": json.dumps(sc.model_kwargs),
        "data": sc.dataset,
        "batch-size": sc.batch_size,
        "unique-labels": sc.unique_labels,
        "protocol": sc.protocol.to_json()["name"],
        "defenses": ";".join(defense_spec(d) for d in sc.defenses),
        "label-smoothing": sc.label_smoothing,
        "mixup": sc.mixup or 0.0,
        "bn-mode": sc.bn_mode,
        "seed": sc.seed,
    }
    if sc.image_size is not None:
        cfg["image-size"] = sc.image_size
    for key, value in sc.protocol.to_json().items():
        if key != "name" and value is not None:
            cfg[key.replace("_", "-")] = value
    return cfg
