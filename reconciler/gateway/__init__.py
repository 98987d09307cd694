"""The gateway: one loopback OpenAI-compatible endpoint for every Model, routed by what the status files show.

routes (pure: which workloads serve a Model, or why none does), routes_file (the reconciler writes it atomically,
the gateway re-reads it when it changes), upstream (least outstanding requests), server (the aiohttp app).
"""
