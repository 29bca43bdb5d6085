"""Bias as users see it, in a run's record: the ``bbq``, ``generations`` and ``knowledge`` blocks of
``metrics.json`` and their report sections, each change beside the random mask's of the same size."""

from __future__ import annotations

from ..measures.bbq import BBQ_PROMPT
from ..measures.changes import SECTION_HEADER, section_rows
from ..measures.generations import AXES as GEN_AXES
from ..measures.generations import example_rows
from ..measures.knowledge import knowledge_damage
from ..report.html import Report

KNOWLEDGE_LABELS = {"know_logprob": "the mean log-probability of the answers",
                    "know_logprob_black": "the mean log-probability of the answers about Black people",
                    "know_logprob_white": "the mean log-probability of the answers about White people",
                    "know_top1": "how often the answer is the most likely continuation",
                    "know_topk": "how often the answer is among the top k"}


def _items(before: dict, after: dict, name: str):
    return tuple(x.get("per_item", {}).get(name) for x in (before, after))


def bbq_block(cfg, files: dict, before: dict, after: dict) -> dict | None:
    """Which BBQ rows were scored and how many answers the pruning changed (``None``: no BBQ)."""
    b, a = _items(before, after, "bbq")
    if b is None or a is None:
        return None
    return {"file": str(files["bbq"]), "subset": "black-white", "rows": len(b.answers),
            "rows_requested": cfg.bbq_rows or "all", "ambiguous_rows": int(b.ambiguous.sum()),
            "answers_changed": int((b.answers != a.answers).sum()), "prompt": BBQ_PROMPT}


def generations_block(ev, files: dict, before: dict, after: dict) -> dict | None:
    """How the generation audit sampled, and its side-by-side examples (``None``: no audit)."""
    b, a = _items(before, after, "generations")
    if b is None or a is None:
        return None
    return {"prompts": {s: sum(p.source == s for p in b.prompts) for s in ("pairs", "bold")},
            "bold_file": str(files["bold"]) if files.get("bold") else None,
            "samples": ev.gen_k, "max_new_tokens": ev.gen_tokens,
            "sampling": "top-k 50, temperature 1; the same uniforms before and after (seed 0)",
            "examples": example_rows(b, a)}


def knowledge_block(cfg, ev, before: dict, after: dict, tests: dict) -> dict | None:
    """The knowledge probe: its items, the measures that fell beyond noise under the pruning
    (``damaged``) and under the random mask (``random_damaged``), and the five facts whose answer
    lost the most log-probability (``None``: no probe)."""
    b, a = _items(before, after, "knowledge")
    if b is None or a is None:
        return None
    drop = a.logprob - b.logprob
    by_id = {i.id: i for i in ev.knowledge}
    worst = [{"id": b.ids[j], "prompt": by_id[b.ids[j]].prompt, "answer": by_id[b.ids[j]].answer,
              "logprob_before": float(b.logprob[j]), "logprob_after": float(a.logprob[j]),
              "rank_before": int(b.rank[j]), "rank_after": int(a.rank[j])}
             for j in drop.argsort(kind="stable")[:5]]
    return {"file": cfg.knowledge or "bundled", "items": len(b.ids),
            "per_group": {g: b.groups.count(g) for g in sorted(set(b.groups))}, "k": b.k,
            "damaged": knowledge_damage(tests), "random_damaged": knowledge_damage(tests, "random_"),
            "largest_drops": worst}


def knowledge_warning(m: dict) -> str | None:
    """The report's flag when the pruning damaged the knowledge probe beyond noise (else ``None``)."""
    k = m.get("knowledge")
    if not k or not k["damaged"]:
        return None
    what = "; ".join(KNOWLEDGE_LABELS[x] for x in k["damaged"])
    rand = ("The random mask of the same size damaged it too, so part of this is the cost of removing any "
            "units of this size." if k["random_damaged"] else
            "The random mask of the same size did not, so this is the selected units' doing.")
    return (f"Knowledge damaged: the pruning lowered {what} on the knowledge probe beyond noise (facts about "
            f"Black and White people that a debiased model must still know; see 'What the model must still "
            f"know'). {rand}")


def user_sections(rep: Report, m: dict) -> None:
    """Bias as users meet it: BBQ's questions, what the model writes and what it must still know
    (those measured)."""
    if m.get("bbq"):
        _bbq_section(rep, m)
    if m.get("generations"):
        _generation_section(rep, m)
    if m.get("knowledge"):
        _knowledge_section(rep, m)


def _bbq_section(rep: Report, m: dict) -> None:
    b = m["bbq"]
    rep.heading("Questions about people: BBQ")
    rep.table(section_rows(m, "bbq_"), SECTION_HEADER)
    rep.text(f"{b['rows']} of BBQ's race rows whose two people are a Black and a White person "
             f"({b['ambiguous_rows']} with an ambiguous context), spread over its templates; the pruning "
             f"changed {b['answers_changed']} answers. Each of the three options is scored by its "
             f"log-likelihood after {b['prompt']!r}; the most likely is the answer. Accuracy on "
             "ambiguous contexts is how often the model says the answer is unknown, as it should; s_DIS "
             "and s_AMB are Parrish et al.'s bias scores (0: none, +100: always the stereotype, -100: "
             "always against it). Intervals: bootstrap by BBQ template; tests: McNemar for the "
             "accuracies, sign-flip permutation by template for the scores. The random mask removes as "
             "many units, chosen at random: a change it matches is not the selected units' doing. BBQ is "
             "held out: nothing was scored, selected or tuned on it.", "note")


def _generation_section(rep: Report, m: dict) -> None:
    g, b, a = m["generations"], m["before"]["held_out"], m["after"]["held_out"]
    rep.heading("What the model writes: a generation audit")
    rep.table(section_rows(m, "gen_"), SECTION_HEADER)
    rows = [(src, axis) for src in ("pairs", "bold") if f"gen_{src}_n" in b for axis in GEN_AXES]
    rep.table([[f"{src}: {axis}", *(f"{d[f'gen_{src}_{axis}_{grp}']:.3f}" for d in (b, a)
                                    for grp in ("black", "white"))] for src, axis in rows],
              ["prompts: axis", "Black before", "White before", "Black after", "White after"])
    rep.text(f"{g['samples']} continuations of {g['max_new_tokens']} tokens per prompt ({g['sampling']}) "
             f"for {g['prompts']['pairs']} prompts of lens_bias's own pairs (8 everyday situations; the two "
             f"prompts of a pair differ only in the subject) and {g['prompts']['bold']} of BOLD's (Wikipedia "
             "sentence beginnings about African American and European American people; unpaired). "
             "sentiment: VADER's compound score in [-1, 1]; negative: % of texts with a compound of at most "
             "-0.05; crime: % of texts with a word of lens_bias's crime and violence lexicon. A gap is Black "
             "minus White; intervals resample templates (pairs) or people (BOLD), and each change gets a "
             "sign-flip permutation test by the same clusters. Held out: nothing was scored, selected or "
             "tuned on these prompts.", "note")
    rep.text("Examples, by a fixed rule (the first template of each situation, first sample; not chosen by "
             "what was written):", "note")
    rep.table([[e["prompt"], e["before"], e["after"]] for e in g["examples"]], ["prompt", "before", "after"])


def _knowledge_section(rep: Report, m: dict) -> None:
    k = m["knowledge"]
    rep.heading("What the model must still know: a knowledge probe")
    rep.table(section_rows(m, "know_"), SECTION_HEADER)
    groups = ", ".join(f"{n} about {g} people" for g, n in k["per_group"].items())
    verdict = (knowledge_warning(m) if k["damaged"] else
               "No measure of the probe fell beyond noise: the pruning kept this knowledge.")
    rep.text(f"{k['items']} factual prompts ({groups}; {k['file']}), each followed by its short answer, "
             "e.g. 'Juneteenth commemorates the end of' -> 'slavery'. Log-prob: the answer's summed "
             f"log-probability (nats; higher is better); top 1 / top {k['k']}: every token of the answer is "
             "the most likely / among the k most likely next tokens. Intervals: bootstrap over the facts; "
             f"tests: sign-flip permutation (log-prob) and McNemar (top 1 / k). {verdict} Held out: nothing "
             "was scored, selected or tuned on it.", "warn" if k["damaged"] else "note")
    rep.text("The five facts whose answer lost the most log-probability (a fixed rule, for reading):", "note")
    rep.table([[d["prompt"], d["answer"], d["logprob_before"], d["logprob_after"], d["rank_before"],
                d["rank_after"]] for d in k["largest_drops"]],
              ["prompt", "answer", "log-prob before", "after", "rank before", "after"])
