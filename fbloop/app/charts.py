"""The dashboard's charts: pure builders from a view model's rows to an Altair chart (or, for the
``Φ̂`` / ``Φ*`` heatmaps, a matplotlib figure); ``app.py`` only places them."""

from __future__ import annotations

import altair as alt
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROUTE_COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756"]  # shared, hard, rest, skipped (views.ROUTES)


def readout_chart(curve: dict[str, list], held: dict[str, list], pairs: dict[str, list] | None = None) -> alt.Chart:
    """PCC, held-out agreement and the held-out pairs' PCC against answers, one line each (any may be empty)."""
    rows = [{"answers": a, "value": v, "readout": "PCC"} for a, v in zip(curve["answers"], curve["pcc"])]
    rows += [{"answers": a, "value": v, "readout": "held-out agreement"}
             for a, v in zip(held["answers"], held["agreement"])]
    if pairs:
        rows += [{"answers": a, "value": v, "readout": "held-out pairs' PCC"}
                 for a, v in zip(pairs["answers"], pairs["pcc"])]
    low = min(0.0, min(r["value"] for r in rows))
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("answers:Q", axis=alt.Axis(format="d", title="answers")),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[low, 1.0]), title=None),
        color=alt.Color("readout:N", legend=alt.Legend(title=None, orient="bottom")),
        tooltip=["readout:N", "answers:Q", alt.Tooltip("value:Q", format=".4f")])
    return (base.mark_line() + base.mark_point(filled=True, size=40)).properties(height=280)


def share_chart(rows: list[dict], y: str, color: str | None = None, tooltip: list | None = None) -> alt.Chart:
    """Horizontal bars of a share in [0, 1] (``rows`` carry ``y``, ``share``, ``label``), labelled at their tips."""
    base = alt.Chart(alt.Data(values=rows)).encode(
        y=alt.Y(f"{y}:N", title=None),
        x=alt.X("share:Q", scale=alt.Scale(domain=[0, 1.3]),  # room for the labels past 100%
                axis=alt.Axis(format="%", title=None, values=[0, 0.25, 0.5, 0.75, 1])))
    split = {"yOffset": f"{color}:N"} if color else {}
    bars = base.mark_bar().encode(**split, **({"color": alt.Color(f"{color}:N", legend=alt.Legend(title=None))}
                                              if color else {}), **({"tooltip": tooltip} if tooltip else {}))
    text = base.mark_text(align="left", dx=4).encode(text="label:N", **split)
    return (bars + text).properties(height=(70 if color else 45) * len({r[y] for r in rows}) + 20)


def compare_chart(rows: list[dict], x: str, y_title: str, strategies: list[str]) -> alt.Chart:
    """A readout against ``x`` (answers or cost) for several runs: one line per run, coloured by strategy.

    ``strategies`` fixes the colours, so that a strategy keeps its colour in every chart.
    """
    low = min(0.0, min(r["value"] for r in rows))
    tooltip = ["run:N", "strategy:N", alt.Tooltip("answers:Q", format=",d")]
    if any(r["cost"] is not None for r in rows):
        tooltip.append(alt.Tooltip("cost:Q", format=",.2f"))
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X(f"{x}:Q", axis=alt.Axis(format=",d" if x == "answers" else ",.4~g", title=x)),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[low, 1.0]), title=y_title),
        color=alt.Color("strategy:N", scale=alt.Scale(domain=strategies, scheme="tableau10"),
                        legend=alt.Legend(title=None, orient="bottom")),
        detail="run:N",
        tooltip=tooltip + [alt.Tooltip("value:Q", title=y_title, format=".4f")])
    return (base.mark_line() + base.mark_point(filled=True, size=30)).properties(height=300)


def amount_chart(rows: list[dict], x: str, label: str) -> alt.Chart:
    """Horizontal bars of an amount per agent (``rows`` carry ``agent``, ``x``, ``label``), labelled at their tips."""
    top = max([r[x] for r in rows] + [1e-9])
    base = alt.Chart(alt.Data(values=rows)).encode(
        y=alt.Y("agent:N", title=None),
        x=alt.X(f"{x}:Q", scale=alt.Scale(domain=[0, 1.35 * top]), axis=alt.Axis(title=None, tickCount=4)))
    bars = base.mark_bar().encode(tooltip=["agent:N", alt.Tooltip(f"{x}:Q", format=",.4~g")])
    text = base.mark_text(align="left", dx=4).encode(text=f"{label}:N")
    return (bars + text).properties(height=45 * len(rows) + 20)


def routing_chart(routing: list[dict]) -> alt.Chart:
    """The routing split as one stacked bar: shared / hard / rest / skipped queries, counted in the legend."""
    rows = [{**r, "rank": i, "part": f"{r['route']}: {r['queries']:,} ({r['share']:.0%})"}
            for i, r in enumerate(routing)]
    return alt.Chart(alt.Data(values=rows)).mark_bar().encode(  # no y: the bar spans the chart's height
        x=alt.X("queries:Q", stack="zero", title="queries routed"),
        color=alt.Color("part:N", scale=alt.Scale(domain=[r["part"] for r in rows], range=ROUTE_COLOURS),
                        legend=alt.Legend(title=None, orient="right")),
        order=alt.Order("rank:Q"),
        tooltip=["route:N", alt.Tooltip("queries:Q", format=",d"), alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=120)  # the whole chart, axis included (Streamlit fits it)


def heatmaps(hat, star=None):
    """``Φ̂`` beside ``Φ*`` (when known) on one colour scale, [-1, 1]: a matplotlib figure (the caller closes it)."""
    mats = [(hat, r"learned $\hat{\Phi}$")] + ([(star, r"target $\Phi^*$")] if star is not None else [])
    fig, axes = plt.subplots(1, len(mats), figsize=(4 * len(mats), 3.6), squeeze=False)
    for ax, (mat, title) in zip(axes[0], mats):
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig
