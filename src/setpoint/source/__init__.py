"""Sources: where desired state comes from (Git remotes and refs) and the revisions fetched.

The engine polls and fetches through :class:`GitSource`; the renderer reads a
revision's files from :meth:`GitSource.tree`.
"""

from setpoint.source.git import SHA_RE, GitSource, normalize_url, redact_url

__all__ = ["SHA_RE", "GitSource", "normalize_url", "redact_url"]
