"""Exceptions for problems a user can cause and fix; each message names the thing and the fix.

`hub_error` turns whatever huggingface_hub raised into one of them. It lives here, at the bottom layer, so the
data loaders, the publishing code and the Space pusher all map a failed Hub request the same way.
"""

from __future__ import annotations

from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


class VlsafeError(Exception):
    """Base class of vlsafe's user-facing errors."""


class DataError(VlsafeError, ValueError):
    """A dataset file, record or image is missing or malformed."""


class HubAccessError(VlsafeError, PermissionError):
    """The Hub refused access (gated or private repository, missing or invalid token)."""


def hub_error(
    error: BaseException,
    repo_id: str,
    action: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    filename: str | None = None,
    write: bool = False,
    attempts: int | None = None,
) -> VlsafeError:
    """The user-facing error for a Hub request that failed while trying to `action` `repo_id`; raise it
    ``from None`` (the client's exception may quote request headers). The token is never part of a message.

    Access problems (gated, private or missing repo, 401, 403) become a `HubAccessError` saying how to get
    access; a missing revision or file, or an unreachable Hub, a `DataError` for a dataset (else a
    `VlsafeError`). `attempts` is set for the commit of a push: its generic failure says nothing was committed.
    """
    found = _access_error(error, repo_id, action, repo_type=repo_type, write=write) or _missing_error(
        error, repo_id, action, repo_type=repo_type, revision=revision, filename=filename
    )
    if found is not None:
        return found
    if isinstance(error, ValueError) and "metadata" in str(error).lower():
        return VlsafeError(f"The Hub rejected the README.md front matter for {repo_id}: {first_line(error)}")
    if attempts is None:
        return VlsafeError(f"Could not {action} {repo_id}: {reason(error)}.")
    return VlsafeError(
        f"Could not {action} {repo_id} after {attempts} attempt(s): {reason(error)}. Nothing was committed; "
        "run the push again (the Hub skips files it already has)."
    )


def _access_error(
    error: BaseException, repo_id: str, action: str, *, repo_type: str, write: bool
) -> HubAccessError | None:
    """The error for a request the Hub refused for lack of access, else None."""
    status = http_status(error)
    kind = "Space" if repo_type == "space" else repo_type
    access = "write" if write else "read"
    login = (
        f"Log in with `hf auth login` or set HF_TOKEN to a token with {access} access "
        "(https://huggingface.co/settings/tokens)"
    )
    if isinstance(error, GatedRepoError):  # before RepositoryNotFoundError, its base class
        page = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
        return HubAccessError(
            f"{repo_id} is a gated {kind} repository and this token has no access to it. Accept its terms on "
            f"{page} while logged in, then authenticate here with `hf auth login` or the HF_TOKEN environment "
            f"variable (or pass token=...). Hub said: HTTP {status or '?'}."
        )
    if isinstance(error, RepositoryNotFoundError):
        return HubAccessError(
            f"{kind.capitalize()} repository {repo_id!r} was not found, or it is private and this token cannot "
            f"see it (HTTP {status or '?'}). Check the id. {login}. To use a local copy instead, pass its folder."
        )
    if status == 401:
        return HubAccessError(
            f"The Hub refused the credentials while trying to {action} {repo_id} (HTTP 401). {login}; the token "
            "given is missing, invalid or expired."
        )
    if status == 403:
        return HubAccessError(
            f"This token may not {action} {repo_id} (HTTP 403). Use a token with {access} access to the namespace "
            f"{repo_id.split('/')[0]!r} (a fine-grained token needs that permission on it), or use your own "
            "namespace."
        )
    return None


def _missing_error(
    error: BaseException,
    repo_id: str,
    action: str,
    *,
    repo_type: str,
    revision: str | None,
    filename: str | None,
) -> VlsafeError | None:
    """The error for a revision, file or repo id that does not exist (or cannot be reached), else None."""
    missing = DataError if repo_type == "dataset" else VlsafeError
    if isinstance(error, RevisionNotFoundError):
        return missing(f"Revision {revision!r} does not exist in {repo_id}; check the revision name.")
    if isinstance(error, LocalEntryNotFoundError):  # before EntryNotFoundError, its base class
        return missing(
            f"Cannot {action} {repo_id}: the Hub is unreachable and {filename or 'the file'} is not in the local "
            "cache. Connect to the Hub (or set HF_ENDPOINT to a mirror), or pass a local folder instead."
        )
    if isinstance(error, EntryNotFoundError):
        return missing(f"{repo_id} has no file {filename!r} (revision {revision or 'main'}).")
    if isinstance(error, HFValidationError):
        return missing(
            f"{repo_id!r} is neither an existing folder nor a Hub repo id (<user-or-org>/<name>); check the path "
            "or the id."
        )
    return None


def http_status(error: BaseException | None) -> int | None:
    """The HTTP status behind `error` or one of its causes (the client wraps upload errors)."""
    while error is not None:
        response = getattr(error, "response", None)
        if response is not None and getattr(response, "status_code", None):
            return response.status_code
        error = error.__cause__ or error.__context__
    return None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def reason(error: BaseException) -> str:
    """A one-line account of a failed request: its HTTP status (when it has one) and first message line."""
    status = http_status(error)
    return f"HTTP {status}: {first_line(error)}" if status else first_line(error)
