"""The file-system provider family: kinds File, Directory and Symlink on a local target root.

``provider.py`` is the provider (registered by :mod:`setpoint.providers.registry`); the
other modules are its parts: ``spec`` (the kinds' specs), ``read``, ``plan``, ``apply``,
``walk`` (descriptor walk from the root), ``watch`` (inotify), ``guard`` and ``common``.
"""
