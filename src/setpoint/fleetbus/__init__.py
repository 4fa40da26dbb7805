"""setpoint on NATS: the fleet bus (fan-out, fleet status, rollout waves)."""
