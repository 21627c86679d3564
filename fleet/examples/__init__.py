"""The packaged examples: workflow files, the knowledge base, the eval sets, plan workloads,
the example order-status API (shop_api.py) and example user tasks (tasks.py). The main job
that runs them is :mod:`fleet.demo`."""
