"""Write-back: the commands that change the desired state, as Git commits.

A pipeline's last step, or an operator's change, is a commit: ``set`` changes
fields of a resource where they are declared, ``promote`` copies Release
versions from one overlay to another, ``update-versions`` follows a Release's
``versionPolicy``; ``explain`` says where a managed thing comes from. They are
clients of Git, not of the engine (shared/DESIGN.md "Write-back").

Modules: ``transaction`` (edit → validate → commit → push, re-applied when the
branch moved), ``gitwork`` (the temporary clone and push loop), ``stack``
(which file declares a resource or field, through overlays and patches),
``yamledit`` (byte-preserving edits of one value), ``validate`` (the agent's
checks), ``setfield``, ``promote``, ``versions``, ``explain`` (one per command).
"""
