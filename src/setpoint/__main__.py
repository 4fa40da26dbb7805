"""``python -m setpoint``: the same as the ``setpoint`` command.

Importing :mod:`setpoint` first checks the Python version (see ``setpoint.python_problem``).
"""

from setpoint.cli_fast import main

main()
