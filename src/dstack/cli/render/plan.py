"""The plan header of `dstack apply` for runs (cli.md §2 step 3), from a `RunPlan`."""

from __future__ import annotations

from typing import Any

from dstack.cli.render.format import format_duration, format_price

SPOT_TEXT = {True: "spot", False: "on-demand", None: "auto"}


def _type_text(conf: dict[str, Any]) -> str:
    kind = conf.get("type", "")
    if kind == "task":
        return f"task (nodes={conf.get('nodes') or 1})"
    return kind


def resources_text(requirements: dict[str, Any], conf: dict[str, Any]) -> str:
    from dstack.models.resources import ResourcesSpec, render_requirements

    for raw in (requirements.get("resources"), conf.get("resources")):
        if raw is None:
            continue
        try:
            return render_requirements(ResourcesSpec.model_validate(raw))
        except ValueError:
            continue
    return render_requirements(ResourcesSpec())


def spot_text(requirements: dict[str, Any], conf: dict[str, Any]) -> str:
    policy = conf.get("spot_policy")
    if policy:
        return str(policy)
    if "spot" in requirements:
        spot = requirements["spot"]
        return spot if isinstance(spot, str) else SPOT_TEXT.get(spot, "auto")
    return "on-demand"


def retry_text(retry: dict[str, Any] | None) -> str:
    if not retry:
        return "off"
    events = ", ".join(retry.get("on_events") or [])
    return f"{format_duration(retry.get('duration'), off_text='')}[{events}]"


def idle_text(value: Any) -> str:
    if value is None:
        return "5m"
    if isinstance(value, int) and value < 0 or value == "off":
        return "-"
    return format_duration(value)


def plan_properties(plan: Any, verbose: bool = False) -> list[tuple[str, str]]:
    spec = plan.effective_run_spec or plan.run_spec
    conf = spec.configuration
    job_spec = plan.job_plans[0].job_spec if plan.job_plans else None
    requirements = job_spec.requirements if job_spec else {}
    max_price = requirements.get("max_price", conf.get("max_price"))
    pairs = [
        ("Project", plan.project_name),
        ("User", plan.user),
        ("Type", _type_text(conf)),
        ("Resources", resources_text(requirements, conf)),
        ("Spot policy", spot_text(requirements, conf)),
        ("Max price", format_price(max_price) if max_price else "off"),
        ("Retry policy", retry_text(job_spec.retry if job_spec else conf.get("retry"))),
    ]
    creation = conf.get("creation_policy") or "reuse-or-create"
    if verbose or creation != "reuse-or-create":
        pairs.append(("Creation policy", creation))
    pairs.append(("Idle duration", idle_text(conf.get("idle_duration"))))
    max_duration = job_spec.max_duration if job_spec else conf.get("max_duration")
    pairs.append(("Max duration", format_duration(max_duration)))
    if conf.get("type") == "dev-environment":
        pairs.append(("Inactivity duration", format_duration(conf.get("inactivity_duration"))))
    reservation = conf.get("reservation") or requirements.get("reservation")
    if verbose or reservation:
        pairs.append(("Reservation", reservation or "no"))
    return pairs
