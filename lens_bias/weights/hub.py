"""Upload an exported Hugging Face folder to the Hub (``lens-bias export --push-to-hub REPO_ID``).

The folder is written first, so a failed upload (no network, no login, a bad repository id) leaves
it intact and raises :class:`~lens_bias.errors.LensBiasError` naming the problem and the fix: check
the network, log in (``hf auth login`` or ``HF_TOKEN``), or upload the folder later with
``hf upload REPO_ID FOLDER``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import LensBiasError

# a hub that cannot be reached fails in seconds, not minutes; slow uploads are not cut
CONNECT_TIMEOUT_S = 10.0


def check_push(repo_id: str | None, format: str) -> None:
    """Refuse ``--push-to-hub`` before any work: with a format other than ``hf``, or a malformed
    repository id (checked offline).

    Examples:
        >>> check_push(None, "torch-prune"), check_push("me/pruned-model", "hf")
        (None, None)
        >>> check_push("me/pruned-model", "optipfair")  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        lens_bias.errors.LensBiasError: --push-to-hub uploads a Hugging Face folder: use it with
        --format hf, ...
    """
    if repo_id is None:
        return
    if format != "hf":
        raise LensBiasError(f"--push-to-hub uploads a Hugging Face folder: use it with --format hf, not "
                            f"{format!r}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise LensBiasError(f"--push-to-hub {repo_id!r} is not a Hub repository id ({e}); "
                            "use OWNER/NAME, for example your-name/smollm2-135m-pruned") from None


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it at import, or as set since."""
    from huggingface_hub import constants

    return (bool(constants.HF_HUB_OFFLINE)
            or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"))


@contextmanager
def _connect_timeout(seconds: float) -> Iterator[None]:
    """Give huggingface_hub's shared HTTP client a connect timeout for the block (it has none by
    default), restored afterwards; a client without a ``timeout`` attribute is left alone."""
    from huggingface_hub import get_session

    session = get_session()
    old = getattr(session, "timeout", None)
    if old is not None:
        session.timeout = type(old)(None, connect=seconds)
    try:
        yield
    finally:
        if old is not None:
            session.timeout = old


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Upload ``folder`` (an exported Hugging Face folder) to the Hub model repository ``repo_id``,
    created if missing; return its URL. Any failure raises :class:`~lens_bias.errors.LensBiasError`
    and leaves ``folder`` as it was.

    Examples:
        >>> import tempfile
        >>> push_folder(tempfile.mkdtemp(), "me/pruned")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.LensBiasError: ...is not an exported Hugging Face folder (no config.json)...
    """
    folder = Path(folder)
    later = f"The folder {folder} is written and intact; upload it later with `hf upload {repo_id} {folder}`."
    if not (folder / "config.json").is_file():
        raise LensBiasError(f"{folder} is not an exported Hugging Face folder (no config.json); "
                            "write it with lens-bias export --format hf first")
    if _offline():
        raise LensBiasError("cannot upload to the Hub: HF_HUB_OFFLINE is set. Unset it and "
                            f"check the network. {later}")
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise LensBiasError("cannot upload to the Hub: not logged in. Run `hf auth login` (huggingface-cli "
                            f"login in older versions) or set HF_TOKEN to a token with write access. {later}")
    try:
        with _connect_timeout(CONNECT_TIMEOUT_S):
            api = HfApi()
            url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                              commit_message="Upload a model pruned by lens_bias")
    except Exception as e:  # network (httpx / requests), HTTP 401 / 403 / 404, disk: all a failed upload
        raise LensBiasError(f"uploading {folder} to the Hub repository {repo_id} failed ({type(e).__name__}: "
                            f"{str(e)[:300]}). Check the network (and proxy), that you are logged in with "
                            "write access (`hf auth login` or HF_TOKEN) and the repository id. "
                            f"{later}") from e
    return str(url)
