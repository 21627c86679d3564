"""The fleet's own ops, as a plug-in: ``workers.ops`` holds op modules registered with
:func:`fleet.registry.op` and advertised through the ``agent_fleet.ops`` entry points;
``workers.models`` loads models once per process and registers their preloaders. Nothing in
``fleet`` imports this package.
"""
