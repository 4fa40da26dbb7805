"""What the agent tells the world: events, logs, metrics and notifications.

:class:`~setpoint.obs.observer.Observer` is created by the agent; it listens to
every journal entry the state DB stores (``StateDB.on_journal``) and to each pass
result, and feeds the event stream (:mod:`.events`), the log (:mod:`.logs`), the
Prometheus metrics (:mod:`.metrics`) and the outgoing webhooks (:mod:`.notify`).
:mod:`.views` computes what the API, the UI and the metrics show of a stack.
"""
