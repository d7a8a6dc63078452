-- What Tapstream could not record, as HR and operators read it in Postgres. Both tables are
-- projections of a topic (attendance.dlq, attendance.unmatched), written by the worker's
-- ledger (streams/ledger.py); the topics stay the durable record.

-- One row per dead letter: the attendance.dlq message it came from is its identity.
CREATE TABLE IF NOT EXISTS quarantine (
    dlq_partition    integer     NOT NULL,
    dlq_offset       bigint      NOT NULL,
    reason           text        NOT NULL,            -- schemas/quarantine.py Reason codes
    detail           text        NOT NULL,
    stage            text        NOT NULL,            -- push | pull | stream
    device_serial    text,
    original         bytea       NOT NULL,            -- the offending bytes, exactly
    original_size    integer     NOT NULL,            -- before any truncation
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    quarantined_at   timestamptz NOT NULL,
    replayed_at      timestamptz,                     -- set by `tapstream quarantine replay`
    replay_note      text,
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_partition, dlq_offset)
);

CREATE INDEX IF NOT EXISTS quarantine_reason_time ON quarantine (reason, quarantined_at);
CREATE INDEX IF NOT EXISTS quarantine_device_time ON quarantine (device_serial, quarantined_at);

-- One row per parked punch (its user code had no active employee). Resolved when the punch
-- lands in attendance_records: re-sent by the worker as soon as the code is mapped.
CREATE TABLE IF NOT EXISTS unmatched_punches (
    event_id        uuid        PRIMARY KEY,
    device_serial   text        NOT NULL,
    user_code       text        NOT NULL,
    device_time     timestamp   NOT NULL,
    device_tz       text        NOT NULL,
    punch_time      timestamptz NOT NULL,
    punch_state     smallint    NOT NULL,
    verify_mode     integer     NOT NULL,
    reason          text        NOT NULL,             -- unknown_employee | inactive_employee
    punch           bytea       NOT NULL,             -- the RawPunch as on attendance.raw
    parked_at       timestamptz NOT NULL DEFAULT now(),
    last_parked_at  timestamptz NOT NULL DEFAULT now(),
    rematched_at    timestamptz,                      -- last re-sent to attendance.raw
    resolved_at     timestamptz                       -- landed in attendance_records
);

CREATE INDEX IF NOT EXISTS unmatched_open_code ON unmatched_punches (user_code) WHERE resolved_at IS NULL;
