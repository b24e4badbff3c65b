"""The dashboard's chart builders (fbloop.app.charts), apart from the app: what each chart holds and encodes."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fbloop.app import charts


def values(chart) -> list[dict]:
    spec = chart.to_dict()
    data = spec.get("data") or spec["layer"][0]["data"]
    return data["values"]


def test_the_readout_chart_has_a_line_per_readout_and_room_below_zero():
    chart = charts.readout_chart({"answers": [10, 20], "pcc": [-0.2, 0.9]}, {"answers": [20], "agreement": [0.8]},
                                 {"answers": [20], "pcc": [0.7]})
    rows = values(chart)
    assert {r["readout"] for r in rows} == {"PCC", "held-out agreement", "held-out pairs' PCC"} and len(rows) == 4
    assert chart.to_dict()["layer"][0]["encoding"]["y"]["scale"]["domain"] == [-0.2, 1.0]


def test_share_and_amount_charts_grow_with_their_rows():
    rows = [{"agent": a, "share": s, "label": f"{s:.0%}"} for a, s in (("llm", 0.9), ("people", 0.6))]
    one, two = charts.share_chart(rows[:1], "agent"), charts.share_chart(rows, "agent")
    assert one.to_dict()["height"] < two.to_dict()["height"] and values(two) == rows
    spent = charts.amount_chart([{"agent": "llm", "spent": 2.5, "label": "$2.50"}], "spent", "label").to_dict()
    assert spent["layer"][0]["encoding"]["x"]["scale"]["domain"] == [0, pytest.approx(1.35 * 2.5)]


def test_compare_chart_keeps_a_strategys_colour_and_shows_cost_only_when_known():
    rows = [{"run": "a", "strategy": "random", "answers": 10, "cost": None, "value": 0.5},
            {"run": "b", "strategy": "uncertainty", "answers": 10, "cost": None, "value": 0.7}]
    enc = charts.compare_chart(rows, "answers", "PCC", ["random", "uncertainty"]).to_dict()["layer"][0]["encoding"]
    assert enc["color"]["scale"]["domain"] == ["random", "uncertainty"]
    assert "cost" not in [t.get("field") for t in enc["tooltip"]]
    rows[0]["cost"] = 0.2
    enc = charts.compare_chart(rows, "cost", "PCC", ["random", "uncertainty"]).to_dict()["layer"][0]["encoding"]
    assert "cost" in [t.get("field") for t in enc["tooltip"]]


def test_the_routing_chart_stacks_the_routes_in_order_with_their_counts():
    routing = [{"route": "shared", "queries": 40, "share": 0.2}, {"route": "hard", "queries": 160, "share": 0.8}]
    spec = charts.routing_chart(routing).to_dict()
    assert [r["part"] for r in values(charts.routing_chart(routing))] == ["shared: 40 (20%)", "hard: 160 (80%)"]
    assert spec["encoding"]["color"]["scale"]["range"] == charts.ROUTE_COLOURS


@pytest.mark.parametrize("with_target", [True, False])
def test_heatmaps_put_phi_hat_beside_the_target_on_one_scale(with_target):
    hat = np.eye(4)
    fig = charts.heatmaps(hat, -np.eye(4) if with_target else None)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == (2 if with_target else 1) and all(im.get_clim() == (-1, 1) for im in images)
    plt.close(fig)
