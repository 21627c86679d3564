"""The `fleet` command line: one module per family of commands (run, host, plan, measure),
registered in :mod:`fleet.cli.main`; every table in :mod:`fleet.cli.tables`."""
