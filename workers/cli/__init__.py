"""The ``hookfleet`` command: the terminal's way into the fleet."""
