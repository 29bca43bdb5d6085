"""Plotly figures. Every function returns a ``go.Figure`` (never shows it)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..scores import Scores
from ..vocab import Kind


def neuron_scores_by_layer(scores: Scores, top_per_layer: int = 15, title: str | None = None) -> go.Figure:
    """Per layer: a box of all neuron scores (precomputed quartiles, so the file stays small) and
    the top neurons as points (hover: layer, index, score)."""
    s = scores.neurons.float()
    fig = go.Figure()
    layers = list(range(s.shape[0]))
    q = torch.quantile(s, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), dim=1)
    fig.add_trace(go.Box(
        x=layers, q1=q[1].tolist(), median=q[2].tolist(), q3=q[3].tolist(),
        lowerfence=q[0].tolist(), upperfence=q[4].tolist(), name="all neurons", marker_color="#9aa5b1",
        hoverinfo="skip",
    ))
    k = min(top_per_layer, s.shape[1])
    vals, idx = torch.topk(s, k, dim=1)
    xs = [la for la in layers for _ in range(k)]
    fig.add_trace(go.Scatter(
        x=xs, y=vals.flatten().tolist(), mode="markers", name=f"top {k} per layer",
        customdata=[[la, int(i)] for la, row in zip(layers, idx.tolist(), strict=True) for i in row],
        hovertemplate="layer %{customdata[0]}, neuron %{customdata[1]}<br>score %{y:.3g}<extra></extra>",
        marker={"size": 6, "color": "#c0392b"},
    ))
    fig.update_layout(
        title=title or (f"Neuron scores by layer ({scores.settings.get('scorer', '?')}, "
                        f"{scores.settings.get('metric', '')})"),
        xaxis_title="layer", yaxis_title="estimated bias reduction if removed", template="plotly_white",
    )
    return fig


def head_heatmap(scores: Scores, title: str | None = None) -> go.Figure:
    """Layer x head heatmap of head scores."""
    h = scores.heads.float()
    fig = go.Figure(go.Heatmap(
        z=h.tolist(), x=list(range(h.shape[1])), y=list(range(h.shape[0])), colorscale="RdBu_r", zmid=0,
        hovertemplate="layer %{y}, head %{x}<br>score %{z:.3g}<extra></extra>", colorbar={"title": "score"},
    ))
    fig.update_layout(title=title or "Head scores (layer x head)", xaxis_title="head", yaxis_title="layer",
                      template="plotly_white")
    return fig


def validation_scatter(result: dict, kind: Kind = "neurons") -> go.Figure:
    """Predicted (attribution) vs exact metric reduction, with the correlations in the title."""
    r = result[kind]
    comps = r["components"]
    fig = go.Figure(go.Scatter(
        x=r["exact"], y=r["predicted"], mode="markers",
        customdata=comps, hovertemplate="layer %{customdata[0]}, index %{customdata[1]}<br>exact %{x:.3g}"
                                        "<br>predicted %{y:.3g}<extra></extra>",
        marker={"size": 6, "color": "#2c7fb8"},
    ))
    lo = min(min(r["exact"]), min(r["predicted"]))
    hi = max(max(r["exact"]), max(r["predicted"]))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "gray"},
                             name="y = x", hoverinfo="skip"))
    fig.update_layout(
        title=f"{kind}: predicted vs exact (Spearman {r['spearman']:.3f}, Pearson {r['pearson']:.3f}, "
              f"n={r['n']})",
        xaxis_title="exact reduction of the metric", yaxis_title="attribution estimate",
        template="plotly_white",
        showlegend=False,
    )
    return fig


def pruning_curves(rows: Sequence[dict], bias_key: str = "js", capability_key: str = "wikitext_ppl",
                   before: dict | None = None) -> go.Figure:
    """Held-out bias and capability against the % of parameters removed, one line per scorer/kind;
    points whose JS change is within noise (``js_within_noise``) are drawn hollow."""
    fig = make_subplots(rows=1, cols=2,
                        subplot_titles=(f"held-out bias ({bias_key})", f"capability ({capability_key})"))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scorer"], r["kind"]), []).append(r)
    palette = ["#c0392b", "#2c7fb8", "#27ae60", "#8e44ad", "#f39c12", "#7f8c8d", "#16a085", "#d35400"]
    for i, ((scorer, kind), rs) in enumerate(sorted(groups.items())):
        rs = sorted(rs, key=lambda r: r["params_pct"])
        x = [0.0] + [r["params_pct"] for r in rs] if before else [r["params_pct"] for r in rs]
        color = palette[i % len(palette)]
        dash = "solid" if kind == "neurons" else "dash"
        for col, key in ((1, bias_key), (2, capability_key)):
            ys = [r.get(key) for r in rs]
            if before:
                ys = [before.get(key)] + ys
            if all(y is None for y in ys):
                continue
            hollow = ([False] if before else []) + [bool(r.get("js_within_noise")) for r in rs]
            fig.add_trace(go.Scatter(
                x=x, y=ys, mode="lines+markers", name=f"{scorer} / {kind}", legendgroup=f"{scorer}{kind}",
                showlegend=col == 1, line={"color": color, "dash": dash},
                marker={"symbol": ["circle-open" if h else "circle" for h in hollow], "size": 8},
                hovertemplate=f"{scorer} / {kind}<br>%{{x:.3f}} % params<br>{key} %{{y:.4g}}<extra></extra>",
            ), row=1, col=col)
    fig.update_xaxes(title_text="% of parameters removed")
    fig.update_layout(title="Pruning curves (simulated with ablation hooks)", template="plotly_white")
    return fig


def before_after(before: dict, after: dict, key: str = "js") -> go.Figure:
    """Held-out bias per domain before and after pruning."""
    doms = sorted(before["by_domain"])
    fig = go.Figure([
        go.Bar(name="before", x=doms + ["all"], y=[before["by_domain"][d][key] for d in doms] + [before[key]],
               marker_color="#9aa5b1"),
        go.Bar(name="after", x=doms + ["all"], y=[after["by_domain"][d][key] for d in doms] + [after[key]],
               marker_color="#c0392b"),
    ])
    fig.update_layout(barmode="group", title=f"Held-out bias per domain ({key}) before and after pruning",
                      yaxis_title=key, template="plotly_white")
    return fig


def activation_diff_by_layer(diff: dict[str, torch.Tensor]) -> go.Figure:
    """optiPfair-style mean |a_B - a_W| per layer for MLP neurons and head outputs."""
    fig = go.Figure()
    for kind, v in diff.items():
        fig.add_trace(go.Scatter(x=list(range(len(v))), y=v.tolist(), mode="lines+markers", name=kind))
    fig.update_layout(title="Mean |activation(Black) - activation(White)| at the last token, by layer",
                      xaxis_title="layer", yaxis_title="mean absolute difference", template="plotly_white")
    return fig


def generalization_heatmap(gm: dict) -> go.Figure:
    """The cross-domain matrix of :func:`lens_bias.studies.generalize.generalization_matrix`: rows = the
    domain the pruning was learned on, columns = held-out test domain, cells = JS reduction (%);
    a cell within noise (``gm["within_noise"]``) shows its number in parentheses."""
    rows, cols = gm["rows"], gm["test_domains"]
    z = [[gm["reduction_pct"][t][d] for d in cols] for t in rows]
    noise = gm.get("within_noise", {})
    text = [["-" if v is None else f"({v:.0f})" if noise.get(t, {}).get(d) else f"{v:.0f}"
             for d, v in zip(cols, row, strict=True)] for t, row in zip(rows, z, strict=True)]
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=rows, text=text, texttemplate="%{text}", colorscale="RdBu", zmid=0,
        colorbar={"title": "JS reduction %"},
        hovertemplate="learned on %{y}<br>tested on %{x}<br>JS reduction %{z:.1f} %<extra></extra>",
    ))
    ind, cross = gm.get("in_domain_mean_pct"), gm.get("cross_domain_mean_pct")
    sub = "" if ind is None or cross is None else f": in-domain {ind:.1f} %, cross-domain {cross:.1f} %"
    sub += "<br>(n): within noise, the 95 % interval covers 0 or p >= 0.05" if noise else ""
    fig.update_layout(
        title=f"Cross-domain transfer ({gm['kind']} at {gm['budget']}, {gm['scorer']}){sub}",
        xaxis_title="tested on (held-out templates)", yaxis_title="pruning learned on",
        template="plotly_white",
        yaxis={"autorange": "reversed"},
    )
    return fig


def overlap_heatmap(ov: dict, title: str = "Overlap of the pruned units (Jaccard)") -> go.Figure:
    """Jaccard overlap between pruned unit sets, with the per-layer counts as a second panel."""
    names = ov["names"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Jaccard overlap", "pruned units per layer"),
                        column_widths=[0.45, 0.55])
    fig.add_trace(go.Heatmap(
        z=ov["jaccard"], x=names, y=names, text=[[f"{v:.2f}" for v in r] for r in ov["jaccard"]],
        texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1, showscale=False,
        hovertemplate="%{y} vs %{x}<br>Jaccard %{z:.2f}<extra></extra>"), row=1, col=1)
    for n in names:
        fig.add_trace(go.Scatter(x=list(range(len(ov["by_layer"][n]))), y=ov["by_layer"][n],
                                 mode="lines+markers", name=n,
                                 hovertemplate=f"{n}<br>layer %{{x}}: %{{y}} units<extra></extra>"),
                      row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white")
    return fig


def transfer_bars(res: dict) -> go.Figure:
    """Leave-one-domain-out transfer (:func:`lens_bias.studies.transfer.leave_one_domain_out`): held-out JS
    reduction (%) per domain with its 95 % interval, one bar for the mask learned without the domain
    and one for the mask learned on all domains, then the pooled pair; a bar within noise is hatched
    and lighter, and its hover says so."""
    recs = [*res["rows"], {**res["pooled"], "domain": "pooled"}]
    names = [r["domain"] for r in recs]
    fig = go.Figure()
    for key, label, color in (("left_out", "learned without the domain", "#c0392b"),
                              ("all", "learned on all domains", "#2c7fb8")):
        cs = [r[key] for r in recs]
        y = [c["reduction_pct"] for c in cs]
        ci = [c["reduction_ci"] for c in cs]
        noise = [bool(c["within_noise"]) for c in cs]
        up = [None if v is None or c is None else c[1] - v for v, c in zip(y, ci, strict=True)]
        down = [None if v is None or c is None else v - c[0] for v, c in zip(y, ci, strict=True)]
        fig.add_trace(go.Bar(
            name=label, x=names, y=y,
            error_y={"type": "data", "symmetric": False, "array": up, "arrayminus": down},
            marker={"color": color, "opacity": [0.45 if n else 1.0 for n in noise],
                    "pattern": {"shape": ["/" if n else "" for n in noise]}},
            customdata=[["-" if i is None else f"[{i[0]:.1f}, {i[1]:.1f}]",
                         "-" if c["p"] is None else f"{c['p']:.3g}",
                         "yes" if n else "no"] for i, c, n in zip(ci, cs, noise, strict=True)],
            hovertemplate=f"%{{x}}: {label}<br>JS reduction %{{y:.1f}} %<br>95 % CI %{{customdata[0]}}"
                          "<br>p %{customdata[1]}<br>within noise: %{customdata[2]}<extra></extra>",
        ))
    loss = res["pooled"]["loss"]
    sub = ""
    if loss["points"] is not None:
        ci = "" if loss["ci"] is None else " [{:.1f}, {:.1f}]".format(*loss["ci"])
        noise = " (within noise)" if loss["within_noise"] else ""
        sub = f"<br>pooled: an unseen domain loses {loss['points']:.1f} points of reduction{ci}{noise}"
    s = res["settings"]
    fig.update_layout(
        barmode="group", template="plotly_white", yaxis_title="held-out JS reduction (%)",
        title=f"Leave-one-domain-out transfer ({s['kind']} at {s['budget']}, {s['scorer']}){sub}"
              "<br>hatched, lighter: within noise (the 95 % interval covers 0 or p >= 0.05)",
        margin={"t": 110},
    )
    return fig


def selector_frontier(res: dict) -> go.Figure:
    """The bias-capability frontier of :func:`lens_bias.studies.selectors.compare_selectors`: per
    selector and kind (heads dashed), held-out JS reduction (%) against WikiText-2 perplexity
    change (%) over its budgets (in order of parameters pruned), both with 95 % intervals (the
    perplexity change falls back to KL, without interval, when there is no WikiText)."""
    fig = go.Figure()
    cap = "wikitext_ppl" if all("wikitext_ppl" in r["tests"] for r in res["rows"]) else None
    for kind in ("neurons", "heads"):
        rows = [r for r in res["rows"] if r["kind"] == kind]
        for sel in dict.fromkeys(r["label"] for r in rows):
            rs = sorted((r for r in rows if r["label"] == sel), key=lambda r: r["params"])
            js, ppl = [r["tests"]["js"] for r in rs], [r["tests"].get(cap) for r in rs]
            y = [-c["pct"] for c in js]
            x = [c["pct"] for c in ppl] if cap else [r["kl_neutral"] for r in rs]
            err_x = {"type": "data", "symmetric": False,
                     "array": [c["pct_ci"][1] - v for c, v in zip(ppl, x, strict=True)],
                     "arrayminus": [v - c["pct_ci"][0] for c, v in zip(ppl, x, strict=True)]} if cap else None
            name = sel if kind == "neurons" else f"{sel}, heads"
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", name=name, text=[r["budget"] for r in rs],
                line={"dash": "dash"} if kind == "heads" else None, error_x=err_x,
                error_y={"type": "data", "symmetric": False,
                         "array": [-c["pct_ci"][0] - v for c, v in zip(js, y, strict=True)],
                         "arrayminus": [v + c["pct_ci"][1] for c, v in zip(js, y, strict=True)]},
                hovertemplate=("%{text}: JS reduction %{y:.1f} %, capability change %{x:.2f}<extra>" + name
                               + "</extra>"),
            ))
    fig.update_layout(title="Bias removed vs capability lost, per selector (budgets along each line)",
                      xaxis_title=("WikiText-2 perplexity change (%)" if cap
                                   else "KL on neutral text (nats/token)"),
                      yaxis_title="held-out JS reduction (%)", template="plotly_white")
    return fig


def train_vs_held_out(res: dict) -> go.Figure:
    """The train-to-held-out gap of :func:`lens_bias.studies.selectors.compare_selectors`: per
    neuron row (selector and budget), the JS reduction on the train pairs it was selected on and
    on the held-out templates, both with 95 % intervals, joined by a line (the gap)."""
    rows = [r for r in res["rows"] if r["kind"] == "neurons"]
    names = [f"{r['label'].split(' (')[0]} @ {r['budget']}" for r in rows]
    fig = go.Figure()
    for key, label, color in (("train", "train pairs (selected on)", "#999999"),
                              ("held", "held-out templates", "#2c7fb8")):
        cs = [r["train"] if key == "train" else r["tests"]["js"] for r in rows]
        v = [c["reduction_pct"] if key == "train" else -c["pct"] for c in cs]
        ci = [c["reduction_ci"] if key == "train" else [-c["pct_ci"][1], -c["pct_ci"][0]] for c in cs]
        fig.add_trace(go.Scatter(
            x=v, y=names, mode="markers", name=label, marker={"color": color, "size": 10},
            error_x={"type": "data", "symmetric": False,
                     "array": [c[1] - x for c, x in zip(ci, v, strict=True)],
                     "arrayminus": [x - c[0] for c, x in zip(ci, v, strict=True)]}))
    for r, n in zip(rows, names, strict=True):
        fig.add_shape(type="line", x0=r["train"]["reduction_pct"], x1=-r["tests"]["js"]["pct"], y0=n, y1=n,
                      line={"color": "#cccccc"}, layer="below")
    fig.update_layout(title="Train vs held-out JS reduction per selector "
                            "(the gap is what selection overfits)",
                      xaxis_title="JS reduction (%), 95 % interval", template="plotly_white",
                      height=max(300, 60 + 36 * len(rows)), yaxis={"autorange": "reversed"})
    return fig


def wording_curve(res: dict) -> go.Figure:
    """Held-out and leave-one-domain-out JS reduction (%) against the number of train templates
    per domain (:func:`lens_bias.studies.selectors.wording_curve`): every draw as a point with its
    95 % interval, and the mean over draws as a line."""
    fig = go.Figure()
    for key, label, color in (("held_out", "held-out templates", "#2c7fb8"),
                              ("lodo", "unseen domain (leave-one-out)", "#c0392b")):
        rows = res["rows"]
        x = [r["templates_per_domain"] for r in rows]
        y = [r[key]["reduction_pct"] for r in rows]
        ci = [r[key]["reduction_ci"] or [v, v] for r, v in zip(rows, y, strict=True)]
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=f"{label} (each draw)",
                                 marker={"color": color}, error_y={"type": "data", "symmetric": False,
                                          "array": [c[1] - v for c, v in zip(ci, y, strict=True)],
                                          "arrayminus": [v - c[0] for c, v in zip(ci, y, strict=True)]}))
        ks = sorted(set(x))
        means = [sum(v for k2, v in zip(x, y, strict=True) if k2 == k) / x.count(k) for k in ks]
        fig.add_trace(go.Scatter(x=ks, y=means, mode="lines", name=f"{label} (mean)", line={"color": color}))
    fig.update_layout(title="More training wording: JS reduction vs train templates per domain",
                      xaxis_title="train templates per domain", yaxis_title="JS reduction (%)",
                      template="plotly_white")
    return fig


def arena_pareto(result: dict, capability: str = "wikitext_ppl", max_cost: float = 50.0,
                 min_removed: float = -100.0) -> go.Figure:
    """Held-out JS removed (%) against the perplexity cost (%), one point per method, 95 % intervals as
    error bars; filled: folded into the weights and checked, hollow: simulated only; green: less bias
    beyond noise, red: more, grey: within noise. Methods beyond ``max_cost`` % perplexity or below
    ``min_removed`` % are named in a note instead of stretching the axes."""
    fig, off = go.Figure(), []
    for name, rec in result["methods"].items():
        js, cap = rec["tests"].get("js"), rec["tests"].get(capability)
        if not js or not cap or js.get("pct") is None or cap.get("pct") is None:
            continue
        x, y = cap["pct"], -js["pct"]
        if x > max_cost or y < min_removed:
            off.append(f"{name} ({y:+.0f} % JS removed, {x:+.0f} % perplexity)")
            continue
        xci = cap.get("pct_ci") or [x, x]
        yci = [-v for v in reversed(js.get("pct_ci") or [-y, -y])]
        color = "#9aa5b1" if js.get("within_noise") else "#27ae60" if y > 0 else "#c0392b"
        fig.add_trace(go.Scatter(
            x=[x], y=[y], mode="markers+text", text=[name], textposition="top right", name=name,
            marker={"size": 11, "color": color, "line": {"color": color, "width": 2},
                    "symbol": "circle" if rec["export"]["ok"] else "circle-open"},
            error_x={"type": "data", "symmetric": False, "array": [xci[1] - x], "arrayminus": [x - xci[0]],
                     "color": color},
            error_y={"type": "data", "symmetric": False, "array": [yci[1] - y], "arrayminus": [y - yci[0]],
                     "color": color},
            hovertemplate=f"{name}<br>JS removed %{{y:.1f}} %<br>perplexity %{{x:+.2f}} %<extra></extra>"))
    if off:
        fig.add_annotation(text="off scale: " + "; ".join(off), xref="paper", yref="paper", x=0, y=-0.22,
                           showarrow=False, align="left", font={"size": 11})
    fig.update_layout(title="Mitigation arena: held-out bias removed vs capability cost (95 % intervals)",
                      xaxis_title="WikiText-2 perplexity change (%)", yaxis_title="held-out JS removed (%)",
                      template="plotly_white", showlegend=False, margin={"b": 110})
    return fig
