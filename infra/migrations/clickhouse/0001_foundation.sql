-- Foundation: the analytics fact table. {database} is substituted by the migration runner.
-- ReplacingMergeTree keyed on the deterministic event_id: re-written events collapse at merge
-- time (count with FINAL); retried inserts with the same insert_deduplication_token are
-- dropped at once thanks to non_replicated_deduplication_window.
-- Partitioned by device_time, which is part of the event id, so a duplicate never lands in
-- another partition even if the device's timezone is corrected later.

CREATE TABLE IF NOT EXISTS {database}.attendance_events
(
    event_id         UUID,
    device_serial    LowCardinality(String),
    user_code        String,
    employee_id      String,
    device_time      DateTime64(0, 'UTC'),         -- device wall clock as read (not UTC!)
    device_tz        LowCardinality(String),
    punch_time       DateTime64(0, 'UTC'),         -- 1900..2299: bad device clocks still fit
    punch_state      UInt8,
    verify_mode      UInt16,
    work_code        String,
    source           LowCardinality(String),
    received_at      DateTime64(6, 'UTC'),
    source_partition Int32,
    source_offset    Int64,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(device_time)
ORDER BY (device_serial, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
