"""Device producers: push (ADMS endpoint) and pull (pyzk) write raw punches to Kafka."""
