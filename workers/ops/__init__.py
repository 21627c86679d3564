"""The built-in ops, a plug-in like any other: found through the ``agent_fleet.ops`` entry
points, importing only the op SDK (:mod:`fleet.sdk`). :mod:`workers.ops.models` loads their
models once per worker process. Nothing else in ``fleet`` imports this package."""
