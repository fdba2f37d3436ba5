"""Offers summarised per GPU for `dstack offer --group-by`: a pure function of the offers the
listing found, so the grouped view and the plain one never disagree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dstack.errors import ServerClientError
from dstack.models.gpus import GROUP_BY_VALUES, CountRange, GpuGroup, PriceRange
from dstack.models.offers import InstanceOfferWithAvailability


def check_group_by(group_by: Sequence[str]) -> None:
    unknown = [g for g in group_by if g not in GROUP_BY_VALUES]
    if unknown:
        raise ServerClientError(
            f"cannot group by {unknown[0]!r}: use {', '.join(GROUP_BY_VALUES)}", field="group_by"
        )
    if "region" in group_by and "backend" not in group_by:
        raise ServerClientError(
            "Cannot group by 'region' without also grouping by 'backend'", field="group_by"
        )


def _key(offer: InstanceOfferWithAvailability, group_by: Sequence[str]) -> tuple[Any, ...]:
    gpu = offer.instance.resources.gpus[0]
    return (
        gpu.name,
        gpu.memory_mib,
        gpu.vendor,
        offer.backend if "backend" in group_by else None,
        offer.region if "region" in group_by else None,
        len(offer.instance.resources.gpus) if "count" in group_by else None,
    )


def group_gpus(
    offers: Sequence[InstanceOfferWithAvailability], group_by: Sequence[str]
) -> list[GpuGroup]:
    """One group per GPU (name, memory, vendor), split further by `group_by`; cheapest per-GPU
    price first. Offers without GPUs are left out."""
    check_group_by(group_by)
    buckets: dict[tuple[Any, ...], list[InstanceOfferWithAvailability]] = {}
    for offer in offers:
        if offer.instance.resources.gpus:
            buckets.setdefault(_key(offer, group_by), []).append(offer)
    groups = [_group(key, members, group_by) for key, members in buckets.items()]
    groups.sort(key=lambda g: (g.price.min, g.price.max, g.name, g.memory_mib))
    return groups


def _group(
    key: tuple[Any, ...], offers: list[InstanceOfferWithAvailability], group_by: Sequence[str]
) -> GpuGroup:
    name, memory_mib, vendor, backend, region, _ = key
    counts = [len(o.instance.resources.gpus) for o in offers]
    per_gpu = [o.price / n for o, n in zip(offers, counts, strict=True)]
    spot = {o.instance.resources.spot for o in offers}
    availability = list(dict.fromkeys(o.availability for o in offers))
    return GpuGroup(
        name=name,
        memory_mib=memory_mib,
        vendor=vendor,
        availability=availability,
        spot=[s for s, on in (("spot", True), ("on-demand", False)) if on in spot],
        count=CountRange(min=min(counts), max=max(counts)),
        price=PriceRange(min=min(per_gpu), max=max(per_gpu)),
        backend=backend,
        backends=None if "backend" in group_by else sorted({o.backend for o in offers}),
        region=region,
        regions=None if "region" in group_by else sorted({o.region for o in offers}),
    )
