"""The Celery side: the app and its one task, the run store, the client, worker launch and
heartbeats, and the op SDK (:mod:`fleet.runtime.sdk`) that op modules use."""
