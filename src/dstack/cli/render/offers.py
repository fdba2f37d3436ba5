"""Offer tables shared by the `apply` plan and `dstack offer`."""

from __future__ import annotations

from typing import Any

from dstack.cli.render.format import backend_cell, format_price, gb, resources_cell

AVAILABILITY_TEXT = {
    "not_available": "not available",
    "no_quota": "no quota",
    "no_balance": "no balance",
    "idle": "idle",
    "busy": "busy",
}

COLUMNS = ["#", "BACKEND", "RESOURCES", "INSTANCE TYPE", "PRICE", ""]


def availability_text(offer: Any) -> str:
    value = getattr(offer.availability, "value", offer.availability)
    return AVAILABILITY_TEXT.get(value, "")


def offer_row(index: int, offer: Any) -> list[str]:
    res = offer.instance.resources
    instance = offer.instance.name
    if offer.total_blocks > 1:
        instance += f" ({offer.blocks}/{offer.total_blocks})"
    return [
        str(index),
        backend_cell(offer.backend, offer.region),
        resources_cell(res, spot=res.spot),
        instance,
        format_price(offer.price),
        availability_text(offer),
    ]


def offers_footer(shown: int, total: int, max_price: float | None) -> str | None:
    """` Shown 3 of 12 offers, $40.96max` (upstream glues `max` to the price)."""
    if total <= shown:
        return None
    price = format_price(max_price) if max_price is not None else ""
    return f" Shown {shown} of {total} offers, {price}max"


def offers_table(offers: list[Any], total: int, *, dim_rest: bool):  # noqa: ANN201
    """The table plus a `...` row when offers were left out; the footer is printed apart."""
    from dstack.cli.render.tables import make_table

    rows = [offer_row(i + 1, o) for i, o in enumerate(offers)]
    styles: list[str | None] = [None if i == 0 or not dim_rest else "secondary"
                                for i in range(len(rows))]
    if total > len(offers):
        rows.append(["", "...", "", "", "", ""])
        styles.append("secondary")
    return make_table(COLUMNS, rows, styles=styles)


NO_FLEETS = (
    "The project has no fleets. Create one before submitting a run\n"
    "(`dstack apply -f fleet.dstack.yml`; docs/configuration.md, \"Fleets, volumes, gateways\")."
)
NO_OFFERS = (
    "No matching instance offers available. Why, per backend and host:"
)


def _range_text(lo: float, hi: float, fmt: Any = str) -> str:
    return fmt(lo) if lo == hi else f"{fmt(lo)}..{fmt(hi)}"


def _places_text(values: list[str] | None, single: str | None, many: str) -> str:
    """A region or backend list; more than three regions read as `N regions`."""
    if single is not None:
        return single
    values = values or []
    if many == "regions" and len(values) > 3:
        return f"{len(values)} regions"
    return ", ".join(values)


def gpu_groups_table(groups: list[Any], group_by: list[str]):  # noqa: ANN201
    """`dstack offer --group-by`: one row per GPU group (cli.md §9)."""
    from dstack.cli.render.tables import make_table

    by_backend = "backend" in group_by
    columns = ["#", "GPU", "SPOT", "$/GPU", "BACKEND" if by_backend else "BACKENDS"]
    show_regions = "region" in group_by or by_backend
    if show_regions:
        columns.append("REGION" if "region" in group_by else "REGIONS")
    columns.append("")
    rows = []
    for i, g in enumerate(groups, 1):
        count = _range_text(g.count.min, g.count.max)
        row = [
            str(i),
            f"{g.name}:{gb(g.memory_mib)}:{count}",
            ", ".join(g.spot),
            _range_text(g.price.min, g.price.max, format_price),
            _places_text(g.backends, g.backend, "backends"),
        ]
        if show_regions:
            row.append(_places_text(g.regions, g.region, "regions"))
        texts = [AVAILABILITY_TEXT.get(getattr(a, "value", a), "") for a in g.availability]
        row.append(", ".join(t for t in dict.fromkeys(texts) if t))
        rows.append(row)
    return make_table(columns, rows)
