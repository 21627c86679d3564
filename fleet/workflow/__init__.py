"""The workflow model: nodes, edges, conditions, loops; the builder, the file loader and the
validator. Pure data and checks: no Celery, no Redis."""
