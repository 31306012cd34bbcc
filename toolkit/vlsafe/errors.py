"""Exceptions for problems a user can cause and fix; each message names the thing and the fix."""


class VlsafeError(Exception):
    """Base class of vlsafe's user-facing errors."""


class DataError(VlsafeError, ValueError):
    """A dataset file, record or image is missing or malformed."""


class HubAccessError(VlsafeError, PermissionError):
    """The Hub refused access (gated or private repository, missing or invalid token)."""
