"""Instruct models behind their chat template: an opt-in mode for the prompts of contrastive pairs.

An instruct model is deployed behind its chat template: a user's text reaches it as one user turn
followed by the assistant prefix, never as raw text. :func:`use_chat_template` switches a loaded
model to that mode (``bridge.lens_bias_chat``; :func:`lens_bias.model.load.load_model` with
``chat_template=True``, the CLI's ``--chat-template``): from then on every prompt of a contrastive
pair is tokenized as

    tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                  add_generation_prompt=True, tokenize=False)

without adding special tokens again (:func:`chat_rows`), so the next-token distribution read at the
last token is that of the assistant's first token. The flag is read in one place,
:func:`lens_bias.model.batching.tokenize_pairs`, so attribution, measurement, validation, the pruning
curve and selection all see the same token ids. Plain text stays raw: CrowS-Pairs, WikiText,
LAMBADA, the neutral text and the sentence pairs of ``seqgap`` are likelihoods of text, not prompts.

BOS: lens_bias puts the tokenizer's BOS token first in every row when the tokenizer has one
(:func:`lens_bias.model.batching.tokenize`). A templated row gets exactly one BOS at position 0 as well:
kept when the template writes it (``{{ bos_token }}``), prepended when it does not, never two; none
when the tokenizer has no BOS token. (Some tokenizers use their BOS token as the turn marker too,
SmolLM2's ``<|im_start|>`` for one; those occurrences later in the row are the template's own.)

The weights are untouched: the mode changes what the model is asked, not the model, so an exported
model is the same with it or without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..bridge import Bridge, tokenizer_of
from ..errors import LensBiasError

_PROBE = "The bank decided to"


def chat_text(tokenizer, prompt: str) -> str:
    """``prompt`` as one user turn of the tokenizer's chat template, followed by the assistant
    prefix (the text the model continues when it answers).

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> _, tok = tiny_random_hf()
        >>> tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\\n"
        ...                      "{% endfor %}<assistant>")
        >>> chat_text(tok, "The bank decided to")
        '<user>The bank decided to\\n<assistant>'
    """
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


def one_bos(row: Sequence[int], bos: int | None) -> list[int]:
    """``row`` with exactly one ``bos`` at position 0 (leading BOS tokens collapsed to one, or one
    prepended); unchanged when ``bos`` is ``None``.

    Examples:
        >>> one_bos([7, 8], 1), one_bos([1, 7, 8], 1), one_bos([1, 1, 7], 1), one_bos([7, 8], None)
        ([1, 7, 8], [1, 7, 8], [1, 7], [7, 8])
    """
    if bos is None:
        return list(row)
    k = 0
    while k < len(row) and row[k] == bos:
        k += 1
    return [bos, *row[k:]]


def chat_rows(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token-id rows of ``prompts`` put through the chat template (:func:`chat_text`), tokenized
    without adding special tokens, each with exactly one BOS first when the tokenizer has one
    (:func:`one_bos`), unpadded.

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> _, tok = tiny_random_hf()
        >>> tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\\n"
        ...                      "{% endfor %}<assistant>")
        >>> row = chat_rows(tok, ["The bank decided to"])[0]
        >>> row.count(tok.bos_token_id), row[0] == tok.bos_token_id, tok.decode(row[1:])
        (1, True, '<user>The bank decided to\\n<assistant>')
    """
    if not prompts:
        return []
    texts = [chat_text(tokenizer, p) for p in prompts]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [one_bos(r, tokenizer.bos_token_id) for r in rows]


def check_chat_template(tokenizer, name: str = "the model") -> None:
    """Refuse a tokenizer that has no chat template, or whose template fails on one user turn or
    drops the user's text, with a :class:`~lens_bias.errors.LensBiasError` that names the fix.

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> _, tok = tiny_random_hf()
        >>> check_chat_template(tok, "tiny-random")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.LensBiasError: tiny-random's tokenizer has no chat template...
    """
    fix = ("set one (bridge.lens_bias_tokenizer.chat_template = '<Jinja template>'), load the model from a "
           "folder or Hub id whose tokenizer_config.json / chat_template.jinja has one, or leave the chat "
           "template off (no --chat-template; chat_template=False)")
    if not getattr(tokenizer, "chat_template", None):
        raise LensBiasError(f"{name}'s tokenizer has no chat template, so prompts cannot go through it: "
                            f"{fix}")
    try:
        text = chat_text(tokenizer, _PROBE)
    except Exception as e:  # jinja2 and transformers raise plain exceptions for a template that fails
        raise LensBiasError(f"{name}'s chat template fails on one user turn ({type(e).__name__}: {e}): "
                            f"{fix}") from e
    if not isinstance(text, str) or _PROBE not in text:
        raise LensBiasError(f"{name}'s chat template does not keep the user's text "
                            f"(rendered {str(text)[:120]!r}): {fix}")


def use_chat_template(bridge: Bridge, on: bool = True) -> Bridge:
    """Put every prompt of a contrastive pair through the model's chat template from now on
    (``on=False``: raw prompts again, the default); returns ``bridge``. Refuses a tokenizer
    without a usable chat template (:func:`check_chat_template`).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> b.lens_bias_tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}"
        ...                                        "{% endfor %} Answer:")
        >>> chat_enabled(use_chat_template(b)), chat_enabled(use_chat_template(b, on=False))
        (True, False)
    """
    if on:
        check_chat_template(tokenizer_of(bridge), getattr(bridge, "lens_bias_name", "the model"))
    bridge.lens_bias_chat = bool(on)
    return bridge


def chat_enabled(bridge: Bridge) -> bool:
    """Whether the prompts of pairs go through ``bridge``'s chat template (:func:`use_chat_template`).

    Examples:
        >>> from lens_bias import load_model
        >>> chat_enabled(load_model("tiny-random", device="cpu"))
        False
    """
    return bool(getattr(bridge, "lens_bias_chat", False))
