"""``gradleak audit``: simulate a client round, recover labels and images, write a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli_args import fraction_list, output_dir, positive_int
from ..scenario_args import add_scenario_args, add_victim_checkpoints, scenario_from_args
from .progress import print_estimates, print_training, progress_bars

if TYPE_CHECKING:
    from ..results import AuditResult


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="simulate a client round, recover labels and images, write a report")
    add_scenario_args(p)
    add_victim_checkpoints(p)
    p.add_argument("--attack", action="append", help="attack to run (repeatable; default ig_batch_tv)")
    p.add_argument("--label-method", action="append", help="label method(s); the first that works feeds the attacks")
    p.add_argument(
        "--iterations", type=positive_int(), help="each attack's iteration budget (default: the attack's own)"
    )
    p.add_argument("--restarts", type=positive_int(1000), help="each attack's restarts (default: the attack's own)")
    p.add_argument(
        "--prune-at",
        type=fraction_list,
        help="early elimination of restarts (inverting_gradients): at each fraction of the run, e.g. 0.05,0.1,0.2, "
        "the worse half of the candidates by matching distance stops",
    )
    p.add_argument("--prior", help="generative prior (.safetensors from `gradleak train-prior`) for ggl and gifd")
    p.add_argument("--lpips-weights", help="LPIPS weights (.safetensors); without them LPIPS is not reported")
    p.add_argument(
        "--checkpoint-dir", type=output_dir, help="checkpoint long attacks here; a rerun with the same settings resumes"
    )
    p.add_argument("--out", type=output_dir, default="out/audit", help="output folder (default out/audit)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..auditing import DEFAULT_ATTACK, AuditPlan, audit_scenario, make_attacks
    from ..errors import InputError
    from ..prior import load_prior
    from ..report import write_audit

    scenario = scenario_from_args(a)
    attacks = make_attacks(
        a.attack or [DEFAULT_ATTACK], iterations=a.iterations, restarts=a.restarts, prune_at=a.prune_at
    )
    if a.prior:  # a resource of the attacks that take a generative prior
        if not any(hasattr(x.config, "prior") for x in attacks):
            raise InputError("--prior applies to attacks with a generative prior (ggl, gifd); none was chosen")
        load_prior(a.prior)  # a missing or unusable prior is an error before any work
        attacks = tuple(type(x)(x.config, prior=a.prior) if hasattr(x.config, "prior") else x for x in attacks)
    plan = AuditPlan(
        label_methods=tuple(a.label_method or ["auto"]),
        attacks=attacks,
        seed=scenario.seed,
        estimate_costs=not a.quiet,
        lpips_weights=a.lpips_weights,
        checkpoint_dir=a.checkpoint_dir,
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    on_estimate = None if a.quiet else print_estimates
    if a.victim_checkpoints:
        from ..over_training import audit_over_training, write_over_training

        audits = audit_over_training(
            scenario, plan, a.victim_checkpoints, progress=progress_bars(not a.quiet), on_estimate=on_estimate
        )
        for c in audits:
            print(f"after {c.steps} training steps:")
            print_result(c.result)
        print(f"report: {write_over_training(audits, out)['html']}")
        return 0
    result, truth = audit_scenario(scenario, plan, progress=progress_bars(not a.quiet), on_estimate=on_estimate)
    write_audit(result, out, truth_images=truth.images)
    print_result(result)
    print(f"report: {out / 'report.html'}")
    return 0


def print_result(result: AuditResult) -> None:
    """The server model's training (if any), the verdict and each attack's scores."""
    print_training(result.setting)
    print(f"verdict: {result.verdict.level} — {result.verdict.summary}")
    for run_ in result.attacks:
        if run_.error or run_.result is None or run_.scores is None:
            print(f"  {run_.name}: failed — {run_.error}")
        else:
            g = run_.scores.mean_grey_psnr
            grey = "–" if g is None else f"{g:.2f} dB"
            print(
                f"  {run_.name}: PSNR {run_.scores.mean_psnr:.2f} dB (a grey image: {grey}), "
                f"SSIM {run_.scores.mean_ssim:.3f}, "
                f"{run_.result.iterations} iterations in {run_.result.seconds:.0f} s"
            )
