"""The packaged examples: workflow files, the knowledge base, the eval set, plan workloads,
the example order-status API (shop_api.py) and the main job that runs them (demo.py)."""
