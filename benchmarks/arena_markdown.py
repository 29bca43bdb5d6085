"""The tables of docs/results.md from the ``result.json`` of ``lens-bias experiment arena``.

    python benchmarks/arena_markdown.py experiments/arena/result.json [more/result.json ...]

Several files (runs of the same model, seed and split with different ``--methods``) are merged
method by method; their unmodified model's measures must agree, so that every row is paired against
the same "before". Prints the before line, the main table (changes vs the unmodified model), the
table against the reference method, the winners and each method's settings and fit time.
"""

from __future__ import annotations

import json
import math
import sys

from lens_bias.studies.arena import COLUMNS, cell, table, winners

VS_REFERENCE = ("js", "seqgap", "crows_black_rate", "bbq_s_dis", "bbq_s_amb", "gen_bold_sentiment_gap",
                "know_topk", "wikitext_ppl")


def merged(paths: list[str]) -> dict:
    out = json.loads(open(paths[0]).read())
    for p in paths[1:]:
        other = json.loads(open(p).read())
        for k in ("js", "wikitext_ppl"):
            if not math.isclose(other["before"][k], out["before"][k], rel_tol=1e-9):
                raise SystemExit(f"{p}: its unmodified {k} differs from {paths[0]}'s; not the same set-up")
        for name, rec in other["methods"].items():
            out["methods"].setdefault(name, rec)
    out["winners"] = winners(out)
    return out


def markdown(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    res = merged(paths)
    b = res["before"]
    nan = float("nan")
    print(f"unmodified: JS {b['js']:.4f}, seqgap {b.get('seqgap', nan):.3f}, CrowS Black "
          f"{b.get('crows_black_rate', nan):.1f} %, WikiText ppl {b.get('wikitext_ppl', nan):.2f}\n")
    header, rows = table(res)
    print(markdown(rows, header), "\n")
    ref = res["reference"]
    cols = [c for c in COLUMNS if c[1] in VS_REFERENCE]
    vs = [[n, *[cell(r.get("vs_reference", {}).get(k), s, d) for _, k, s, d in cols]]
          for n, r in res["methods"].items() if n != ref]
    print(f"against {ref} (paired on the same items):\n")
    print(markdown(vs, ["method", *[c[0] for c in cols]]), "\n")
    for k, w in res["winners"].items():
        print(f"- {k}: " + ("none beyond noise" if not w else
                             f"{w['method']} ({w['before']:.4g} -> {w['after']:.4g}, p = {w['p']:.3g})"))
    print()
    for n, r in res["methods"].items():
        s = {k: v for k, v in r["settings"].items() if k != "tried"}
        export = r["export"].get("summary") or r["export"].get("why")
        print(f"- {n}: {s}; fit {r['fit_s']:.0f} s; export: {export}")


if __name__ == "__main__":
    main(sys.argv[1:])
