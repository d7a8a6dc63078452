"""Pull devices (port 4370, via pyzk): supervisor, per-device worker, log parsing, marks, backfill."""
