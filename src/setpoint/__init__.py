"""setpoint: a GitOps agent for hosts.

Git holds the desired state; the agent pulls it, compares it with the target,
corrects the difference (drift) and records what it did in a journal.
The public entry point is the ``setpoint`` command (:mod:`setpoint.cli`).
"""

__version__ = "0.1.0"
