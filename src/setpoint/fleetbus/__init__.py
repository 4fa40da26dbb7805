"""The fleet bus: new commits fanned out to every agent, and the fleet's status, over NATS.

Used only when the config has ``nats:`` (see :class:`setpoint.config.NatsConfig`);
without it nothing here is imported and ``nats`` is never loaded. Modules:

- :mod:`.subjects` (no I/O, no ``nats``): the subject of a source
  (``setpoint.source.<16 hex of sha256 of the normalised URL>``) and the commit
  notice ``{url, ref, commit}``; what a webhook body announces.
- :mod:`.status` (no ``nats`` import): the status bucket ``setpoint-status``, its keys
  (``HOST.STACK``, dots in HOST escaped) and entries, read and written through a
  key-value handle passed in.
- :mod:`.client`: connecting (credentials, TLS), reconnecting forever with back-off.
- :mod:`.bus`: :class:`~setpoint.fleetbus.bus.FleetBus`, the agent's side: it
  subscribes to its sources' subjects, publishes what its webhook hears, and writes
  its stacks' status. Created by :class:`setpoint.engine.agent.Agent`.
- :mod:`.relay`: ``setpoint relay``, a stateless webhook → NATS publisher.
- :mod:`.table`: reading the status bucket for ``setpoint fleet status|watch``.

Everything received is a hint, never an order: a commit notice only makes an agent
check its ref (ls-remote) sooner; what it applies still comes from Git, verified as
configured. A lost message costs latency only: polling stays the safety net.
"""

from __future__ import annotations
