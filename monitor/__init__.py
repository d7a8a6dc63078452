"""The live monitor (`tapstream monitor`): the SSE feed, the monitor page, alerts.

It reads topics only (``attendance.live``, ``devices.status``, ``alerts``) and the pipeline's
status probes, so it can run anywhere, be restarted at will, and never slows the pipeline.
"""
