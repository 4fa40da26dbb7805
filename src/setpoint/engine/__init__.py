"""The engine: one reconcile pass (:mod:`.reconciler`), dependency order (:mod:`.graph`),
the controller that wires sources, state and providers (:mod:`.controller`) and
the agent loop (:mod:`.agent`). The engine imports no concrete provider.
"""
