"""The ``fleet`` command line. Commands of the tooling layer (demo, bench, profile) plug in
through the ``agent_fleet.commands`` entry-point group."""
