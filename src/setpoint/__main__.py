"""``python -m setpoint``: the same as the ``setpoint`` command."""

from setpoint.cli import main

main()
