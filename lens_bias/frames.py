"""Results as pandas DataFrames, for a notebook or a script.

pandas is optional (``pip install 'lens_bias[pandas]'``) and imported only when a table is made:
:func:`require_pandas` imports it, or raises a :class:`~lens_bias.errors.LensBiasError` that names
the install command. :meth:`lens_bias.measures.metrics.PairMetrics.to_pandas` and
:meth:`lens_bias.scores.Scores.to_pandas` use it too.

* :func:`curve_frame`: :func:`lens_bias.studies.curve.pruning_curve`'s records, one row per point;
* :func:`validation_frame`: :func:`lens_bias.attribution.validation.validate`'s result, one row per
  sampled unit with its predicted and exact effect;
* :func:`transfer_frame`: :func:`lens_bias.studies.transfer.leave_one_domain_out`'s rows, one per domain,
  and the pooled row;
* :func:`selectors_frame`: :func:`lens_bias.studies.selectors.compare_selectors`' rows, each row's
  tests as columns.

Nested dicts become columns by :func:`flatten`: keys joined by ``_``, and an interval ``X_ci``
(``[lo, hi]`` or None) becomes ``X_lo`` and ``X_hi`` (``ci`` alone: ``lo`` and ``hi``). Every
function reads the JSON-ready results (plain dicts and lists, as written to ``result.json``), so
this module imports no lens_bias module but :mod:`lens_bias.errors`.
"""

from __future__ import annotations

from types import ModuleType

from .errors import LensBiasError

PANDAS_INSTALL = "pip install 'lens_bias[pandas]'"


def require_pandas(what: str = "this table") -> ModuleType:
    """The ``pandas`` module, or a :class:`~lens_bias.errors.LensBiasError` naming the install
    command when it is not installed (``what`` says which call needed it).

    Examples:
        >>> require_pandas().__name__
        'pandas'
    """
    try:
        import pandas
    except ImportError as e:
        raise LensBiasError(f"{what} needs pandas, which is not installed ({e}). "
                            f"Install it with: {PANDAS_INSTALL}") from e
    return pandas


def flatten(d: dict, prefix: str = "") -> dict:
    """``d`` as one level: nested dict keys joined by ``_`` after ``prefix``; an interval ``X_ci``
    (two numbers or None) as ``X_lo`` and ``X_hi``; other values (lists included) kept as they are.
    Two keys that would make the same column are refused.

    Examples:
        >>> flatten({"js": {"pct": -50.0, "pct_ci": [-60.0, -40.0], "p": 0.01},
        ...          "loss": {"ci": None}})  # doctest: +NORMALIZE_WHITESPACE
        {'js_pct': -50.0, 'js_pct_lo': -60.0, 'js_pct_hi': -40.0, 'js_p': 0.01, 'loss_lo': None,
         'loss_hi': None}
    """
    out: dict = {}

    def put(key: str, value) -> None:
        if key in out:
            raise LensBiasError(f"two values for column {key!r}: rename one of the keys")
        out[key] = value

    for k, v in d.items():
        name = f"{prefix}_{k}" if prefix else str(k)
        if k == "ci" or str(k).endswith("_ci"):
            base = name[:-3] if k != "ci" else prefix
            lo, hi = (None, None) if v is None else v
            put(f"{base}_lo" if base else "lo", lo)
            put(f"{base}_hi" if base else "hi", hi)
        elif isinstance(v, dict):
            for kk, vv in flatten(v, name).items():
                put(kk, vv)
        else:
            put(name, v)
    return out


def curve_frame(rows: list[dict]):
    """A pandas DataFrame of :func:`lens_bias.studies.curve.pruning_curve`'s records: one row per
    point (scorer, kind, budget, units, parameters, the held-out measures; ``by_domain`` as
    ``by_domain_<domain>_js``, ...; the JS reduction's interval as ``js_reduction_lo`` / ``_hi``).

    Examples:
        >>> df = curve_frame([{"scorer": "ablate", "kind": "neurons", "budget": "1%", "js": 0.01,
        ...                    "by_domain": {"finance": {"js": 0.02}}, "js_reduction_ci": [10.0, 30.0]}])
        >>> list(df.columns)
        ['scorer', 'kind', 'budget', 'js', 'by_domain_finance_js', 'js_reduction_lo', 'js_reduction_hi']
    """
    pd = require_pandas("curve_frame")
    return pd.DataFrame([flatten(r) for r in rows])


def validation_frame(result: dict):
    """A pandas DataFrame of :func:`lens_bias.attribution.validation.validate`'s result: one row per sampled
    unit, with ``kind``, ``layer``, ``index``, ``part`` (``"top"`` for the top-k by |score|,
    ``"random"`` for the random ones, ``"given"`` when the components were given), ``predicted``
    (the score) and ``exact`` (the exact effect).

    Examples:
        >>> res = {"heads": {"components": [[0, 1], [1, 0]], "predicted": [0.5, 0.1], "exact": [0.4, 0.2],
        ...                  "k": 1, "n": 2, "spearman_top": float("nan")}}
        >>> validation_frame(res).values.tolist()
        [['heads', 0, 1, 'top', 0.5, 0.4], ['heads', 1, 0, 'random', 0.1, 0.2]]
    """
    pd = require_pandas("validation_frame")
    rows = []
    for kind, r in result.items():
        n_top = None if r.get("spearman_top") is None else min(r["k"], r["n"])
        for i, ((layer, index), pred, exact) in enumerate(zip(r["components"], r["predicted"], r["exact"],
                                                              strict=True)):
            part = "given" if n_top is None else "top" if i < n_top else "random"
            rows.append({"kind": kind, "layer": layer, "index": index, "part": part, "predicted": pred,
                         "exact": exact})
    return pd.DataFrame(rows, columns=["kind", "layer", "index", "part", "predicted", "exact"])


def transfer_frame(res: dict):
    """A pandas DataFrame of :func:`lens_bias.studies.transfer.leave_one_domain_out`: one row per held-out
    domain and a last row with ``domain`` ``"pooled"`` (every held-out pair together). Columns:
    ``n_pairs``, ``js_before``, ``js_left_out``, ``js_all``, each mask's reduction as
    ``left_out_reduction_pct``, ``left_out_reduction_lo`` / ``_hi``, ``left_out_p``,
    ``left_out_within_noise`` (``all_...`` the same), the loss as ``loss_points``, ``loss_lo`` /
    ``_hi``, ``loss_p``, ``loss_within_noise``, and the rows' other fields."""
    pd = require_pandas("transfer_frame")
    rows = [flatten(r) for r in res["rows"]] + [{"domain": "pooled", **flatten(res["pooled"])}]
    return pd.DataFrame(rows)


def selectors_frame(res: dict):
    """A pandas DataFrame of :func:`lens_bias.studies.selectors.compare_selectors`: one row per
    selector, budget and kind, each row's ``tests`` flattened into columns without a prefix
    (``js_pct``, ``js_pct_lo``, ``js_pct_hi``, ``js_p``, ``js_within_noise``, ``wikitext_ppl_pct``,
    ...; positive ``pct`` = the measure rose), the train reduction as ``train_reduction_pct``, ...,
    the leave-one-domain-out reduction (where measured) as ``lodo_pooled_reduction_pct``, ... and
    ``lodo_by_domain_<domain>``, and the paired comparison with the first neuron row at the budget
    (:func:`lens_bias.studies.selectors.versus`) as ``vs_first_reduction_pct``, ... (the per-pair values
    themselves are left out)."""
    pd = require_pandas("selectors_frame")
    rows = []
    for r in res["rows"]:
        row = flatten({"vs_first": None} | {k: v for k, v in r.items() if k not in ("tests", "held_out_js")})
        tests = flatten(r["tests"])
        if clash := sorted(set(row) & set(tests)):
            raise LensBiasError(f"a test and a row field make the same columns {clash}")
        rows.append({**row, **tests})
    return pd.DataFrame(rows)
